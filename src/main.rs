use std::process::ExitCode;

fn main() -> ExitCode {
    // Behave like other Unix tools when the reader of stdout goes away
    // (`spillway inspect ... | head`): end quietly instead of panicking.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of a signal at startup.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match spillway::cli::run() {
        Ok(code) => code,
        Err(err) => {
            // One line, whatever the error chain: scripts grep it, people read it.
            let msg = format!("{err:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
