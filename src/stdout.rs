//! Writing a command's output to stdout. A reader that closed the pipe early (`phoenix render ENV | head -1`)
//! got what it wanted: the command ends quietly with exit 0, as Unix tools do, instead of panicking.

use std::fmt;
use std::io::Write;

/// Writes `args` to stdout. A closed pipe ends the process with exit 0 and no message; any other write
/// error ends it with exit 1 and says so on stderr (there is nowhere else to report it).
pub fn write(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        drop(out);
        exit_on(&e);
    }
}

/// Flushes stdout, with the same rules as [`write`].
pub fn flush() {
    if let Err(e) = std::io::stdout().lock().flush() {
        exit_on(&e);
    }
}

fn exit_on(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

/// `println!` for command output: see [`write`].
#[macro_export]
macro_rules! outln {
    () => { $crate::stdout::write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::stdout::write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for command output: see [`write`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::stdout::write(format_args!($($arg)*)) };
}
