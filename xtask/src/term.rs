//! The local terminal: raw mode while a remote TTY runs, and its window size.

use kube::api::TerminalSize;

/// Restores the terminal's mode when dropped.
pub struct RawMode(libc::termios);

impl RawMode {
    pub fn enter() -> Option<RawMode> {
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawMode(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

pub fn terminal_size() -> Option<TerminalSize> {
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0)
            .then_some(TerminalSize { width: ws.ws_col, height: ws.ws_row })
    }
}
