//! The local terminal: raw mode while a remote TTY runs, and its window size.

use kube::api::TerminalSize;
use rustix::termios::{self, OptionalActions, Termios};

/// Restores the terminal's mode when dropped.
pub struct RawMode(Termios);

impl RawMode {
    /// Puts standard input's terminal in raw mode; None when it is not a terminal.
    pub fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.0);
    }
}

/// Standard output's terminal size; None when it is not a terminal.
pub fn terminal_size() -> Option<TerminalSize> {
    let ws = termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_col > 0).then_some(TerminalSize { width: ws.ws_col, height: ws.ws_row })
}
