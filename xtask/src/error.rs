//! Errors that the top level treats specially.

/// A command that already reported its failure and only needs a non-zero exit.
#[derive(Debug, thiserror::Error)]
#[error("failed")]
pub struct Reported(pub u8);

/// A remote command's exit code becomes ours.
pub fn exit_with(code: i32) -> anyhow::Result<()> {
    if code == 0 { Ok(()) } else { Err(Reported(code.clamp(1, 255) as u8).into()) }
}
