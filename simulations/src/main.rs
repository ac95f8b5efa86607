//! `podmesh-sim`: runs simulation scenarios.

fn main() {
    eprintln!("podmesh-sim: no scenarios yet");
    std::process::exit(2);
}
