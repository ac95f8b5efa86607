//! The TUI's state and rendering, with no IO: keys and node events go in, requests to send come
//! out, and `render` draws the current state. Time is passed in, so notices expire in tests
//! without sleeping.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, List, ListItem, Paragraph, Row, Table, Wrap};
use serde_json::{Value, json};

/// How long a notice stays in the actionbar.
pub const NOTICE_TTL: Duration = Duration::from_secs(4);
/// Notifications and events kept in the pane (oldest dropped first; the inbox keeps messages).
pub const EVENTS_MAX: usize = 500;
/// Commands kept in the input history.
pub const HISTORY_MAX: usize = 100;

/// A `:` command typed by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserCommand {
    /// `:peer <pod>`.
    Peer(String),
    /// `:unpeer <pod>`.
    Unpeer(String),
    /// `:send <pod> <text>`.
    Send(String, String),
    /// `:pod <name>`: switch the selected Pod.
    Switch(String),
    /// `:create <name>`.
    Create(String),
    /// `:status idle|paused|running`.
    Status(String),
    /// `:ack`: acknowledge the messages shown so far.
    Ack,
    /// `:help`.
    Help,
    /// `:quit`.
    Quit,
}

/// Parses one input line; the error says what was expected.
pub fn parse_command(line: &str) -> Result<UserCommand, String> {
    let line = line.trim();
    let body = line
        .strip_prefix(':')
        .ok_or_else(|| "commands start with ':' (try :help)".to_owned())?;
    let (word, rest) = match body.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (body, ""),
    };
    let one = |usage: &str| -> Result<String, String> {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            Err(format!("usage: {usage}"))
        } else {
            Ok(rest.to_owned())
        }
    };
    match word {
        "peer" => one(":peer <pod>").map(UserCommand::Peer),
        "unpeer" => one(":unpeer <pod>").map(UserCommand::Unpeer),
        "send" => match rest.split_once(char::is_whitespace) {
            Some((pod, text)) if !text.trim().is_empty() => {
                Ok(UserCommand::Send(pod.to_owned(), text.trim().to_owned()))
            }
            _ => Err("usage: :send <pod> <text>".to_owned()),
        },
        "pod" => one(":pod <name>").map(UserCommand::Switch),
        "create" => one(":create <name>").map(UserCommand::Create),
        "status" => match rest {
            "idle" | "paused" | "running" => Ok(UserCommand::Status(rest.to_owned())),
            _ => Err("usage: :status idle|paused|running".to_owned()),
        },
        "ack" => Ok(UserCommand::Ack),
        "help" => Ok(UserCommand::Help),
        "quit" | "q" => Ok(UserCommand::Quit),
        other => Err(format!("unknown command :{other} (try :help)")),
    }
}

/// A local API request the IO loop should send on the app's behalf.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The method.
    pub method: &'static str,
    /// Its parameters.
    pub params: Value,
}

/// What a key press asks the IO loop to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing beyond redrawing.
    None,
    /// Send a request.
    Send(Outgoing),
    /// Attach to another Pod.
    Switch(String),
    /// Leave the TUI.
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NoticeKind {
    Info,
    Error,
}

#[derive(Debug, Clone)]
struct Notice {
    text: String,
    kind: NoticeKind,
    until: Instant,
}

/// Everything the TUI shows.
#[derive(Debug)]
pub struct App {
    /// The selected Pod (a local Pod name).
    pub pod: String,
    /// Its address once known (`pod@node`).
    pub address: Option<String>,
    /// Its status once known.
    pub status: Option<String>,
    /// Whether the local API connection is up.
    pub connected: bool,
    /// Rows of the Pods pane (`list_pods` entries).
    pub pods: Vec<Value>,
    /// Rows of the members pane.
    pub members: Vec<Value>,
    /// Set when an event changed who the Pod sees (a peer came or went), so the UI loop
    /// refreshes the Pods pane now rather than at its next periodic refresh.
    pub pods_stale: bool,
    /// Whether the connection to the node was lost at least once (so a new one is a
    /// reconnection, and said so).
    pub lost_node: bool,
    events: VecDeque<String>,
    input: String,
    history: Vec<String>,
    history_at: Option<usize>,
    notice: Option<Notice>,
    show_help: bool,
    /// The id of the last message shown, what `:ack` acknowledges up to.
    shown_up_to: Option<String>,
}

const HELP: &[&str] = &[
    ":peer <pod>          make the selected Pod and <pod> peers (pod@node or a name)",
    ":unpeer <pod>        remove that relation on both nodes",
    ":send <pod> <text>   send a message to a peer",
    ":pod <name>          switch to another local Pod",
    ":create <name>       create a local Pod",
    ":status <s>          set the selected Pod idle, paused or running",
    ":ack                 acknowledge the messages shown: they leave the inbox",
    ":help                show or hide this help",
    ":quit                leave",
];

impl App {
    /// A fresh app following `pod`.
    pub fn new(pod: &str) -> Self {
        App {
            pod: pod.to_owned(),
            address: None,
            status: None,
            connected: false,
            pods: Vec::new(),
            members: Vec::new(),
            pods_stale: false,
            lost_node: false,
            events: VecDeque::new(),
            input: String::new(),
            history: Vec::new(),
            history_at: None,
            notice: None,
            show_help: false,
            shown_up_to: None,
        }
    }

    /// Shows `text` in the actionbar for [`NOTICE_TTL`].
    pub fn notice(&mut self, text: impl Into<String>, now: Instant) {
        self.notice = Some(Notice {
            text: text.into(),
            kind: NoticeKind::Info,
            until: now + NOTICE_TTL,
        });
    }

    /// Shows an error in the actionbar for [`NOTICE_TTL`].
    pub fn error(&mut self, text: impl Into<String>, now: Instant) {
        self.notice = Some(Notice {
            text: text.into(),
            kind: NoticeKind::Error,
            until: now + NOTICE_TTL,
        });
    }

    /// Drops an expired notice; returns whether the screen changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        if self.notice.as_ref().is_some_and(|n| now >= n.until) {
            self.notice = None;
            return true;
        }
        false
    }

    /// Adds a line to the events pane.
    pub fn push_event(&mut self, line: String) {
        if self.events.len() >= EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(line);
    }

    /// Applies a reply or event from the node.
    pub fn apply(&mut self, event: &str, data: &Value, now: Instant) {
        match event {
            "snapshot" => {
                self.address = data["pod"]["address"].as_str().map(str::to_owned);
                self.status = data["pod"]["status"].as_str().map(str::to_owned);
                self.pods = data["pods"].as_array().cloned().unwrap_or_default();
                self.members = data["members"].as_array().cloned().unwrap_or_default();
                // Messages not acknowledged yet, shown again after every attach.
                for message in data["inbox"].as_array().into_iter().flatten() {
                    self.apply("notification", message, now);
                }
            }
            "pods" => self.pods = data["pods"].as_array().cloned().unwrap_or_default(),
            "members" => self.members = data["members"].as_array().cloned().unwrap_or_default(),
            "pod" if data["name"].as_str() == Some(self.pod.as_str()) => {
                self.status = data["status"].as_str().map(str::to_owned);
                self.address = data["address"].as_str().map(str::to_owned);
            }
            "alert" => {
                let inner = data["event"].as_str().unwrap_or("");
                self.apply(inner, &data["data"], now);
            }
            "notification" => {
                if let Some(id) = data["id"].as_str() {
                    self.shown_up_to = Some(id.to_owned());
                }
                self.push_event(format!(
                    "[Peer message from `{}`] {}",
                    data["from"].as_str().unwrap_or("?"),
                    data["message"].as_str().unwrap_or("")
                ));
            }
            "peer_registered" | "peer_unregistered" => {
                self.pods_stale = true;
                let verb = if event == "peer_registered" {
                    "registered"
                } else {
                    "unregistered"
                };
                let text = format!(
                    "Peer {verb}: `{}` <-> `{}`",
                    data["source"].as_str().unwrap_or("?"),
                    data["peer"].as_str().unwrap_or("?")
                );
                self.push_event(text.clone());
                self.notice(text, now);
            }
            "status" => {
                if data["pod"].as_str() == Some(self.pod.as_str()) {
                    self.status = data["status"].as_str().map(str::to_owned);
                }
                self.push_event(format!(
                    "status of {}: {}",
                    data["pod"].as_str().unwrap_or("?"),
                    data["status"].as_str().unwrap_or("?")
                ));
            }
            "member" => {
                let name = data["name"].as_str().unwrap_or("?");
                let state = data["state"].as_str().unwrap_or("?");
                self.push_event(format!("member {name} is {state}"));
                for member in &mut self.members {
                    if member["name"] == name {
                        member["state"] = json!(state);
                        member["incarnation"] = data["incarnation"].clone();
                    }
                }
                for pod in &mut self.pods {
                    if pod["node"] == name {
                        pod["node_state"] = json!(state);
                        let live =
                            matches!(state, "alive" | "suspect") && pod["status"] != "stopped";
                        pod["live"] = json!(live);
                    }
                }
            }
            "delivered" => self.notice("Message delivered", now),
            "acked" => self.notice(format!("Acknowledged {} messages", data["removed"]), now),
            "error" => self.error(data["message"].as_str().unwrap_or("error").to_owned(), now),
            _ => {}
        }
    }

    /// Applies the reply to a request this app sent. A relation change also arrives as a live
    /// event on the attached connection, which records it; the reply only shows the notice.
    pub fn apply_answer(&mut self, event: &str, data: &Value, now: Instant) {
        match event {
            "peer_registered" | "peer_unregistered" => {
                self.pods_stale = true;
                let verb = if event == "peer_registered" {
                    "registered"
                } else {
                    "unregistered"
                };
                self.notice(
                    format!(
                        "Peer {verb}: `{}` <-> `{}`",
                        data["source"].as_str().unwrap_or("?"),
                        data["peer"].as_str().unwrap_or("?")
                    ),
                    now,
                );
            }
            _ => self.apply(event, data, now),
        }
    }

    /// Handles one typed character.
    pub fn type_char(&mut self, c: char) {
        self.input.push(c);
    }

    /// Deletes the last typed character.
    pub fn backspace(&mut self) {
        self.input.pop();
    }

    /// Recalls an older (`up`) or newer command from the history.
    pub fn recall(&mut self, up: bool) {
        if self.history.is_empty() {
            return;
        }
        let at = match (self.history_at, up) {
            (None, true) => self.history.len() - 1,
            (None, false) => return,
            (Some(i), true) => i.saturating_sub(1),
            (Some(i), false) if i + 1 < self.history.len() => i + 1,
            (Some(_), false) => {
                self.history_at = None;
                self.input.clear();
                return;
            }
        };
        self.history_at = Some(at);
        self.input = self.history[at].clone();
    }

    /// Completes the last word of the input with a known Pod address.
    pub fn complete(&mut self) {
        let start = self.input.rfind(' ').map_or(0, |i| i + 1);
        let prefix = &self.input[start..];
        if prefix.is_empty() || prefix.starts_with(':') {
            return;
        }
        let matches: Vec<String> = self
            .pods
            .iter()
            .filter_map(|p| p["address"].as_str())
            .filter(|a| a.starts_with(prefix))
            .map(str::to_owned)
            .collect();
        if let [one] = matches.as_slice() {
            self.input.truncate(start);
            self.input.push_str(one);
        }
    }

    /// Submits the input line; returns what the IO loop should do.
    pub fn submit(&mut self, now: Instant) -> Action {
        let line = std::mem::take(&mut self.input);
        self.history_at = None;
        if line.trim().is_empty() {
            return Action::None;
        }
        if self.history.len() >= HISTORY_MAX {
            self.history.remove(0);
        }
        self.history.push(line.clone());
        let command = match parse_command(&line) {
            Ok(command) => command,
            Err(message) => {
                self.error(message, now);
                return Action::None;
            }
        };
        // Refusals known locally need no round trip, as in the seed's `:peer`.
        let needs_node = !matches!(command, UserCommand::Help | UserCommand::Quit);
        if needs_node && !self.connected {
            self.error("not connected to the node", now);
            return Action::None;
        }
        let running = self.status.as_deref() == Some("running");
        let pod = self.pod.clone();
        match command {
            UserCommand::Help => {
                self.show_help = !self.show_help;
                Action::None
            }
            UserCommand::Quit => Action::Quit,
            UserCommand::Peer(_) | UserCommand::Unpeer(_) if running => {
                self.error(
                    format!("pod {pod} is running; peers change only while idle or paused"),
                    now,
                );
                Action::None
            }
            UserCommand::Peer(target) => Action::Send(Outgoing {
                method: "register_peer",
                params: json!({ "pod": pod, "name": target }),
            }),
            UserCommand::Unpeer(target) => Action::Send(Outgoing {
                method: "unregister_peer",
                params: json!({ "pod": pod, "name": target }),
            }),
            UserCommand::Send(target, text) => Action::Send(Outgoing {
                method: "send_to_peer",
                params: json!({ "pod": pod, "name": target, "message": text }),
            }),
            UserCommand::Create(name) => Action::Send(Outgoing {
                method: "pod_create",
                params: json!({ "name": name }),
            }),
            UserCommand::Status(status) => Action::Send(Outgoing {
                method: "pod_status",
                params: json!({ "name": pod, "status": status }),
            }),
            UserCommand::Switch(name) => Action::Switch(name),
            UserCommand::Ack => match &self.shown_up_to {
                Some(up_to) => Action::Send(Outgoing {
                    method: "inbox_ack",
                    params: json!({ "pod": pod, "up_to": up_to }),
                }),
                None => {
                    self.error("no message shown to acknowledge", now);
                    Action::None
                }
            },
        }
    }

    /// Draws the whole screen.
    pub fn render(&self, frame: &mut Frame<'_>, now: Instant) {
        let rows = Layout::default()
            .direction(Direction::Vertical)
            .constraints([
                Constraint::Min(6),
                Constraint::Length(8),
                Constraint::Length(3),
                Constraint::Length(1),
                Constraint::Length(1),
            ])
            .split(frame.area());
        let top = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(58), Constraint::Percentage(42)])
            .split(rows[0]);
        self.render_pods(frame, top[0]);
        self.render_members(frame, top[1]);
        self.render_events(frame, rows[1]);
        self.render_input(frame, rows[2]);
        self.render_actionbar(frame, rows[3], now);
        let footer = "Enter run  Tab complete  Up/Down history  :help  :quit";
        frame.render_widget(
            Paragraph::new(footer).style(Style::default().fg(Color::DarkGray)),
            rows[4],
        );
        if self.show_help {
            let area = centered(frame.area(), 80, (HELP.len() + 2) as u16);
            let lines: Vec<Line<'_>> = HELP.iter().map(|l| Line::from(*l)).collect();
            frame.render_widget(ratatui::widgets::Clear, area);
            frame.render_widget(
                Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" help ")),
                area,
            );
        }
    }

    fn render_pods(&self, frame: &mut Frame<'_>, area: Rect) {
        let title = format!(
            " Pods visible to {} ({}) ",
            self.address.as_deref().unwrap_or(&self.pod),
            self.status.as_deref().unwrap_or("?")
        );
        let header = Row::new(["POD", "REASON", "STATUS", "LIVE", "NODE"])
            .style(Style::default().add_modifier(Modifier::BOLD));
        let rows = self.pods.iter().map(|p| {
            let live = p["live"].as_bool() == Some(true);
            Row::new(vec![
                Cell::from(p["address"].as_str().unwrap_or("?").to_owned()),
                Cell::from(p["reason"].as_str().unwrap_or("-").to_owned()),
                Cell::from(p["status"].as_str().unwrap_or("?").to_owned()),
                Cell::from(if live { "live" } else { "not live" })
                    .style(Style::default().fg(if live { Color::Green } else { Color::Red })),
                Cell::from(p["node_state"].as_str().unwrap_or("?").to_owned()),
            ])
        });
        let table = Table::new(
            rows,
            [
                Constraint::Percentage(34),
                Constraint::Percentage(20),
                Constraint::Percentage(14),
                Constraint::Percentage(14),
                Constraint::Percentage(18),
            ],
        )
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(title));
        frame.render_widget(table, area);
    }

    fn render_members(&self, frame: &mut Frame<'_>, area: Rect) {
        let header = Row::new(["NODE", "STATE", "INC", "ADDRESS"])
            .style(Style::default().add_modifier(Modifier::BOLD));
        let rows = self.members.iter().map(|m| {
            let state = m["state"].as_str().unwrap_or("?").to_owned();
            let color = match state.as_str() {
                "alive" => Color::Green,
                "suspect" => Color::Yellow,
                _ => Color::Red,
            };
            Row::new(vec![
                Cell::from(m["name"].as_str().unwrap_or("?").to_owned()),
                Cell::from(state).style(Style::default().fg(color)),
                Cell::from(m["incarnation"].to_string()),
                Cell::from(m["address"].as_str().unwrap_or("?").to_owned()),
            ])
        });
        let table = Table::new(
            rows,
            [
                Constraint::Percentage(22),
                Constraint::Percentage(18),
                Constraint::Percentage(12),
                Constraint::Percentage(48),
            ],
        )
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(" Members "));
        frame.render_widget(table, area);
    }

    fn render_events(&self, frame: &mut Frame<'_>, area: Rect) {
        let visible = area.height.saturating_sub(2) as usize;
        let items: Vec<ListItem<'_>> = self
            .events
            .iter()
            .skip(self.events.len().saturating_sub(visible))
            .map(|e| ListItem::new(e.as_str()))
            .collect();
        frame.render_widget(
            List::new(items).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" Notifications and events "),
            ),
            area,
        );
    }

    fn render_input(&self, frame: &mut Frame<'_>, area: Rect) {
        let title = if self.connected {
            " Command "
        } else {
            " Command (not connected) "
        };
        frame.render_widget(
            Paragraph::new(format!("{}_", self.input))
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title(title)),
            area,
        );
    }

    fn render_actionbar(&self, frame: &mut Frame<'_>, area: Rect, now: Instant) {
        let Some(notice) = self.notice.as_ref().filter(|n| now < n.until) else {
            return;
        };
        let style = match notice.kind {
            NoticeKind::Info => Style::default().fg(Color::Black).bg(Color::Green),
            NoticeKind::Error => Style::default().fg(Color::White).bg(Color::Red),
        };
        frame.render_widget(
            Paragraph::new(Line::from(Span::styled(
                format!(" {} ", notice.text),
                style,
            ))),
            area,
        );
    }
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn screen(app: &App, now: Instant) -> String {
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
        terminal.draw(|f| app.render(f, now)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn connected() -> App {
        let mut app = App::new("a");
        app.connected = true;
        app.apply(
            "snapshot",
            &json!({
                "pod": { "address": "a@n1", "name": "a", "status": "idle" },
                "pods": [
                    { "address": "a@n1", "reason": "self_pod", "status": "idle", "live": true, "node": "n1", "node_state": "alive" },
                    { "address": "b@n2", "reason": "peer", "status": "idle", "live": true, "node": "n2", "node_state": "alive" }
                ],
                "members": [
                    { "name": "n1", "state": "alive", "incarnation": 1, "address": "127.0.0.1:1" },
                    { "name": "n2", "state": "alive", "incarnation": 3, "address": "127.0.0.1:2" }
                ]
            }),
            Instant::now(),
        );
        app
    }

    #[test]
    fn ack_acknowledges_up_to_the_last_message_shown_and_only_when_asked() {
        // Unacknowledged messages come with the snapshot and are shown like notifications;
        // nothing is acknowledged until `:ack`, which names the last message shown.
        let now = Instant::now();
        let mut app = connected();
        app.input = ":ack".into();
        assert_eq!(app.submit(now), Action::None, "nothing shown yet");
        let message = |id: &str, text: &str| json!({ "from": "b@n2", "message": text, "id": id, "received_at": 1 });
        app.apply(
            "snapshot",
            &json!({
                "pod": { "address": "a@n1", "name": "a", "status": "idle" },
                "pods": [], "members": [],
                "inbox": [message("n2-1-1", "early"), message("n2-1-2", "later")],
            }),
            now,
        );
        app.apply("notification", &message("n2-1-3", "live"), now);
        let shown = screen(&app, now);
        for text in ["early", "later", "live"] {
            assert!(shown.contains(text), "{text} not shown:\n{shown}");
        }
        app.input = ":ack".into();
        assert_eq!(
            app.submit(now),
            Action::Send(Outgoing {
                method: "inbox_ack",
                params: json!({ "pod": "a", "up_to": "n2-1-3" }),
            })
        );
        app.apply("acked", &json!({ "removed": 3 }), now);
        assert!(screen(&app, now).contains("Acknowledged 3 messages"));
    }

    #[test]
    fn commands_parse_with_their_arguments_and_usage_errors() {
        // Every documented command, and a clear usage line when arguments are missing.
        assert_eq!(
            parse_command(":peer b@n2"),
            Ok(UserCommand::Peer("b@n2".into()))
        );
        assert_eq!(
            parse_command(":unpeer b"),
            Ok(UserCommand::Unpeer("b".into()))
        );
        assert_eq!(
            parse_command(":send b hello there"),
            Ok(UserCommand::Send("b".into(), "hello there".into()))
        );
        assert_eq!(parse_command(":pod c"), Ok(UserCommand::Switch("c".into())));
        assert_eq!(
            parse_command(":create c"),
            Ok(UserCommand::Create("c".into()))
        );
        assert_eq!(
            parse_command(":status paused"),
            Ok(UserCommand::Status("paused".into()))
        );
        assert_eq!(parse_command(":help"), Ok(UserCommand::Help));
        assert_eq!(parse_command(":ack"), Ok(UserCommand::Ack));
        assert_eq!(parse_command(":quit"), Ok(UserCommand::Quit));
        assert_eq!(parse_command(":peer").unwrap_err(), "usage: :peer <pod>");
        assert_eq!(
            parse_command(":send b").unwrap_err(),
            "usage: :send <pod> <text>"
        );
        assert_eq!(
            parse_command(":status stopped").unwrap_err(),
            "usage: :status idle|paused|running"
        );
        assert!(
            parse_command("peer b")
                .unwrap_err()
                .contains("start with ':'")
        );
        assert!(
            parse_command(":fly")
                .unwrap_err()
                .contains("unknown command :fly")
        );
    }

    #[test]
    fn panes_show_pods_members_and_liveness() {
        // The Pods and members panes render what the snapshot said.
        let app = connected();
        let text = screen(&app, Instant::now());
        assert!(text.contains("Pods visible to a@n1 (idle)"), "{text}");
        assert!(text.contains("b@n2") && text.contains("peer") && text.contains("live"));
        assert!(text.contains("Members") && text.contains("127.0.0.1:2"));
    }

    #[test]
    fn a_registered_peer_shows_a_notice_that_expires() {
        // The seed's transient actionbar notice, gone after NOTICE_TTL.
        let mut app = connected();
        let now = Instant::now();
        app.apply(
            "peer_registered",
            &json!({ "source": "a@n1", "peer": "b@n2" }),
            now,
        );
        let notice = "Peer registered: `a@n1` <-> `b@n2`";
        assert!(screen(&app, now).contains(notice));
        let later = now + NOTICE_TTL + Duration::from_millis(1);
        assert!(app.tick(later));
        let after = screen(&app, later);
        assert_eq!(
            after.matches(notice).count(),
            1,
            "still in the events pane, not the bar"
        );
    }

    #[test]
    fn a_relation_change_is_listed_once_when_both_reply_and_event_arrive() {
        // The requester gets a reply and, being attached, the live event: one line, one notice.
        let mut app = connected();
        let now = Instant::now();
        let data = json!({ "source": "a@n1", "peer": "b@n2" });
        app.apply_answer("peer_registered", &data, now);
        app.apply("peer_registered", &data, now);
        assert_eq!(app.events.len(), 1);
        assert!(screen(&app, now).contains("Peer registered: `a@n1` <-> `b@n2`"));
    }

    #[test]
    fn a_relation_change_marks_the_pods_pane_for_refresh() {
        // Both the reply to our own :peer and a live event about a relation ask for a refresh.
        let data = json!({ "source": "a@n1", "peer": "b@n2" });
        let now = Instant::now();
        let mut app = connected();
        assert!(!app.pods_stale);
        app.apply_answer("peer_registered", &data, now);
        assert!(app.pods_stale);
        let mut app = connected();
        app.apply("peer_unregistered", &data, now);
        assert!(app.pods_stale);
    }

    #[test]
    fn errors_from_the_node_are_shown_in_the_actionbar() {
        // An error reply becomes a visible error notice.
        let mut app = connected();
        let now = Instant::now();
        app.apply(
            "error",
            &json!({ "code": "not_live", "message": "peer pod b@n2 is not live" }),
            now,
        );
        assert!(screen(&app, now).contains("peer pod b@n2 is not live"));
    }

    #[test]
    fn local_refusals_need_no_round_trip() {
        // Not connected, or a running Pod asked to peer: refused locally, nothing sent.
        let now = Instant::now();
        let mut offline = App::new("a");
        offline.input = ":peer b@n2".into();
        assert_eq!(offline.submit(now), Action::None);
        assert!(screen(&offline, now).contains("not connected to the node"));

        let mut running = connected();
        running.status = Some("running".into());
        running.input = ":peer b@n2".into();
        assert_eq!(running.submit(now), Action::None);
        assert!(screen(&running, now).contains("peers change only while idle or paused"));
    }

    #[test]
    fn commands_become_local_api_requests() {
        // :peer and :send map to the documented methods with the selected Pod.
        let now = Instant::now();
        let mut app = connected();
        app.input = ":peer b@n2".into();
        assert_eq!(
            app.submit(now),
            Action::Send(Outgoing {
                method: "register_peer",
                params: json!({ "pod": "a", "name": "b@n2" })
            })
        );
        app.input = ":send b@n2 hi".into();
        assert_eq!(
            app.submit(now),
            Action::Send(Outgoing {
                method: "send_to_peer",
                params: json!({ "pod": "a", "name": "b@n2", "message": "hi" })
            })
        );
        app.input = ":pod c".into();
        assert_eq!(app.submit(now), Action::Switch("c".into()));
    }

    #[test]
    fn history_and_completion_help_typing() {
        // Up recalls the last command; Tab completes a unique Pod address.
        let now = Instant::now();
        let mut app = connected();
        app.input = ":help".into();
        app.submit(now);
        app.recall(true);
        assert_eq!(app.input, ":help");
        app.input = ":peer b".into();
        app.complete();
        assert_eq!(app.input, ":peer b@n2");
    }

    #[test]
    fn notifications_appear_labelled_and_a_dead_member_turns_its_pods_not_live() {
        // A message shows as "[Peer message from ...]"; member death updates liveness.
        let now = Instant::now();
        let mut app = connected();
        app.apply(
            "notification",
            &json!({ "from": "b@n2", "message": "hello" }),
            now,
        );
        app.apply(
            "member",
            &json!({ "name": "n2", "state": "dead", "incarnation": 3 }),
            now,
        );
        let text = screen(&app, now);
        assert!(text.contains("[Peer message from `b@n2`] hello"), "{text}");
        assert_eq!(app.pods[1]["live"], false);
        assert!(text.contains("not live"));
    }

    #[test]
    fn the_events_pane_keeps_a_bounded_history() {
        // EVENTS_MAX lines are kept; the oldest go first.
        let mut app = connected();
        for i in 0..EVENTS_MAX + 10 {
            app.push_event(format!("event {i}"));
        }
        assert_eq!(app.events.len(), EVENTS_MAX);
        assert_eq!(app.events.front().unwrap(), "event 10");
    }
}
