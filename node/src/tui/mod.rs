//! The terminal UI attached to the local node (`podmesh tui`).
//!
//! [`app`] holds the state and drawing with no IO; [`run`] connects it to the node's local API
//! (one connection attached to the selected Pod for events, one for requests) and to the
//! terminal.

pub mod app;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossterm::event::{Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};
use serde_json::json;
use tokio::sync::mpsc;

use crate::api::{Reply, Request};
use crate::client::Client;
use app::{Action, App};

/// How often the Pods and members panes are refreshed besides live events.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// Pause between reconnection attempts after the node went away.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// Messages from the node and the keyboard queued for the UI loop.
const QUEUE_LEN_MAX: usize = 1024;
/// Redraw at least this often, so notices expire on screen.
const TICK: Duration = Duration::from_millis(250);

/// What the background tasks tell the UI loop.
#[derive(Debug)]
enum NodeMsg {
    Connected,
    Disconnected,
    Reply(Reply),
    Failed(String),
}

/// Runs the TUI on the node behind `socket`, following local Pod `pod`, until `:quit`.
pub fn run(socket: PathBuf, pod: String) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // ratatui::init enters raw mode and the alternate screen and installs a panic hook that
    // restores the terminal first, so a panic never leaves the terminal unusable.
    let mut terminal = ratatui::init();
    let result = runtime.block_on(ui_loop(&mut terminal, socket, pod));
    ratatui::restore();
    result
}

async fn ui_loop(
    terminal: &mut ratatui::DefaultTerminal,
    socket: PathBuf,
    pod: String,
) -> anyhow::Result<()> {
    let (node_tx, mut node_rx) = mpsc::channel(QUEUE_LEN_MAX);
    let (keys_tx, mut keys_rx) = mpsc::channel(QUEUE_LEN_MAX);
    std::thread::spawn(move || read_keys(keys_tx));

    let mut app = App::new(&pod);
    let mut follower = tokio::spawn(follow(socket.clone(), pod.clone(), node_tx.clone()));
    let mut ticks = tokio::time::interval(TICK);
    let mut last_refresh = Instant::now() - REFRESH_INTERVAL;
    loop {
        let now = Instant::now();
        terminal.draw(|frame| app.render(frame, now))?;
        tokio::select! {
            Some(event) = keys_rx.recv() => {
                let action = on_terminal_event(&mut app, event, Instant::now());
                match action {
                    Action::None => {}
                    Action::Quit => break,
                    Action::Send(outgoing) => {
                        request(&socket, outgoing.method, outgoing.params, &node_tx);
                    }
                    Action::Switch(name) => {
                        follower.abort();
                        app = App::new(&name);
                        follower = tokio::spawn(follow(socket.clone(), name, node_tx.clone()));
                    }
                }
            }
            Some(message) = node_rx.recv() => {
                on_node_message(&mut app, message);
                // Under a burst, apply everything queued before drawing once.
                while let Ok(message) = node_rx.try_recv() {
                    on_node_message(&mut app, message);
                }
                if app.pods_stale {
                    app.pods_stale = false;
                    request(&socket, "list_pods", json!({ "pod": app.pod }), &node_tx);
                }
            }
            _ = ticks.tick() => {
                app.tick(Instant::now());
                if app.connected && last_refresh.elapsed() >= REFRESH_INTERVAL {
                    last_refresh = Instant::now();
                    request(&socket, "list_pods", json!({ "pod": app.pod }), &node_tx);
                    request(&socket, "members", json!({}), &node_tx);
                }
            }
        }
    }
    follower.abort();
    Ok(())
}

fn on_node_message(app: &mut App, message: NodeMsg) {
    let now = Instant::now();
    match message {
        NodeMsg::Connected => {
            if !app.connected {
                let text = if app.lost_node {
                    "reconnected to the node"
                } else {
                    "connected to the node"
                };
                app.notice(text, now);
                app.push_event(text.to_owned());
            }
            app.connected = true;
        }
        NodeMsg::Disconnected => {
            if app.connected {
                app.error("the node went away; reconnecting", now);
                app.push_event("the node went away; reconnecting".to_owned());
                app.lost_node = true;
            }
            app.connected = false;
        }
        // Replies to attach (the snapshot) and events carry no request of ours to answer.
        NodeMsg::Reply(reply) if reply.id.is_none() || reply.event == "snapshot" => {
            app.apply(&reply.event, &reply.data, now);
        }
        NodeMsg::Reply(reply) => app.apply_answer(&reply.event, &reply.data, now),
        NodeMsg::Failed(message) => app.error(message, now),
    }
}

fn on_terminal_event(app: &mut App, event: TermEvent, now: Instant) -> Action {
    let TermEvent::Key(key) = event else {
        return Action::None; // A resize redraws on the next loop turn.
    };
    if key.kind != KeyEventKind::Press {
        return Action::None;
    }
    match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Char(c) => {
            app.type_char(c);
            Action::None
        }
        KeyCode::Backspace => {
            app.backspace();
            Action::None
        }
        KeyCode::Enter => app.submit(now),
        KeyCode::Up => {
            app.recall(true);
            Action::None
        }
        KeyCode::Down => {
            app.recall(false);
            Action::None
        }
        KeyCode::Tab => {
            app.complete();
            Action::None
        }
        _ => Action::None,
    }
}

/// Reads terminal events on a plain thread (crossterm's reader blocks).
fn read_keys(keys_tx: mpsc::Sender<TermEvent>) {
    while let Ok(event) = crossterm::event::read() {
        if keys_tx.blocking_send(event).is_err() {
            return;
        }
    }
}

/// Attaches to `pod` and forwards its prelude and live events, reconnecting whenever the
/// node goes away (a restart, for instance).
async fn follow(socket: PathBuf, pod: String, node_tx: mpsc::Sender<NodeMsg>) {
    loop {
        if let Ok(mut client) = Client::connect(&socket).await {
            let attach = Request {
                id: Some(1),
                method: "attach".to_owned(),
                params: json!({ "pod": pod }),
            };
            if client.send(&attach).await.is_ok() {
                let _ = node_tx.send(NodeMsg::Connected).await;
                while let Ok(reply) = client.next_event().await {
                    if node_tx.send(NodeMsg::Reply(reply)).await.is_err() {
                        return;
                    }
                }
            }
            let _ = node_tx.send(NodeMsg::Disconnected).await;
        }
        tokio::time::sleep(RECONNECT_INTERVAL).await;
    }
}

/// Sends one request on its own connection in the background; its reply (or failure) comes
/// back as a [`NodeMsg`].
fn request(
    socket: &Path,
    method: &'static str,
    params: serde_json::Value,
    node_tx: &mpsc::Sender<NodeMsg>,
) {
    let socket = socket.to_owned();
    let node_tx = node_tx.clone();
    tokio::spawn(async move {
        let result = async {
            let mut client = Client::connect(&socket).await?;
            client.request(method, params).await
        }
        .await;
        let message = match result {
            Ok(reply) => NodeMsg::Reply(reply),
            Err(e) => NodeMsg::Failed(e.to_string()),
        };
        let _ = node_tx.send(message).await;
    });
}
