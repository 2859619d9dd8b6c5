//! The serial-console protocol: run shell commands in a guest and get back exactly their output
//! and exit code.
//!
//! The guest runs an interactive busybox `sh` on ttyS0 with terminal echo off (see
//! `guest/profile`: with ECHO off busybox's line editor does plain line reads and echoes nothing).
//! Each command is wrapped as
//!
//! ```text
//! printf 'VDFW%s-<id>\n' BEGIN; ( <cmd>
//! ) </dev/null 2>&1; printf '\nVDFW%s-<id>:%s\n' END "$?"
//! ```
//!
//! so its output is framed by `VDFWBEGIN-<id>` and `VDFWEND-<id>:<exit code>`. The markers are
//! assembled by `printf` at run time, so even if the wrapper were echoed it could not be mistaken
//! for the markers; ids are never reused, so a late marker of an abandoned command cannot be taken
//! for the current one. Prompts, and anything else between commands, fall outside the frames and
//! are skipped. `\r` (the tty's `onlcr`) is dropped on the way in. stdin is `/dev/null`, so a
//! command can never swallow the harness's next line.
//!
//! A command that overruns its timeout is interrupted with ^C (the shell owns the tty as its
//! controlling terminal, so that is a real SIGINT to the foreground job), then the console is
//! re-synchronised with a fresh marker before the error is returned.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Longest line the harness sends: the guest tty's canonical-mode buffer holds 4095 bytes.
const MAX_LINE: usize = 3500;
/// How long to wait for the console to recover after ^C.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a wait on the console ended without a result.
#[derive(Debug)]
pub(crate) enum ConsoleError {
    /// The deadline passed; carries the unparsed output seen so far.
    Timeout(String),
    /// The other end closed (QEMU exited).
    Closed,
    /// The command cannot be sent (too long, contains control characters).
    Invalid(String),
    /// Writing to the console failed.
    Write(std::io::Error),
}

/// Output received from the guest that has not been consumed by a match yet.
struct OutState {
    buf: Vec<u8>,
    closed: bool,
}

struct Shared {
    state: Mutex<OutState>,
    arrived: Condvar,
}

struct Input {
    writer: Box<dyn Write + Send>,
    next_id: u64,
}

/// One serial console: a writer into the guest's tty and a reader thread collecting its output.
pub(crate) struct Console {
    shared: Arc<Shared>,
    input: Mutex<Input>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain bytes behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Console {
    /// Starts the reader thread on `reader`; every byte read is also appended to `log` verbatim.
    pub(crate) fn new(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        log: Option<File>,
    ) -> Console {
        let shared = Arc::new(Shared {
            state: Mutex::new(OutState {
                buf: Vec::new(),
                closed: false,
            }),
            arrived: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        thread::spawn(move || read_loop(reader, log, &thread_shared));
        Console {
            shared,
            input: Mutex::new(Input {
                writer: Box::new(writer),
                next_id: 1,
            }),
        }
    }

    /// Waits until `matcher` finds something in the unconsumed output. `matcher` returns the end
    /// of what it consumed and its result; everything before that end is discarded.
    pub(crate) fn wait_for<T>(
        &self,
        deadline: Instant,
        mut matcher: impl FnMut(&[u8]) -> Option<(usize, T)>,
    ) -> Result<T, ConsoleError> {
        let mut st = lock(&self.shared.state);
        loop {
            if let Some((end, found)) = matcher(&st.buf) {
                st.buf.drain(..end);
                return Ok(found);
            }
            if st.closed {
                return Err(ConsoleError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ConsoleError::Timeout(
                    String::from_utf8_lossy(&st.buf).into_owned(),
                ));
            }
            st = self
                .shared
                .arrived
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for `needle` and consumes the output up to and including the end of its line;
    /// returns everything consumed (so callers can inspect what came before the marker).
    pub(crate) fn wait_for_line(
        &self,
        needle: &str,
        deadline: Instant,
    ) -> Result<String, ConsoleError> {
        let needle = needle.as_bytes();
        self.wait_for(deadline, |buf| {
            let at = find(buf, needle)?;
            let eol = at + needle.len() + find(&buf[at + needle.len()..], b"\n")?;
            Some((
                eol + 1,
                String::from_utf8_lossy(&buf[..eol + 1]).into_owned(),
            ))
        })
    }

    /// Runs `cmd` in the guest's shell; returns its output (stdout and stderr interleaved) and
    /// exit code. On timeout the command is interrupted and the console re-synchronised.
    pub(crate) fn exec(&self, cmd: &str, timeout: Duration) -> Result<(String, i32), ConsoleError> {
        if cmd.bytes().any(|b| b < 0x20 && b != b'\n' && b != b'\t') {
            return Err(ConsoleError::Invalid(
                "command contains control characters".into(),
            ));
        }
        if cmd.lines().any(|l| l.len() > MAX_LINE) {
            return Err(ConsoleError::Invalid(format!(
                "a command line is longer than {MAX_LINE} bytes (the guest tty would truncate it)"
            )));
        }
        // Holding the input lock for the whole exchange keeps commands strictly one at a time.
        let mut input = lock(&self.input);
        let id = input.next_id;
        input.next_id += 1;
        let wrapped = format!(
            "printf 'VDFW%s-{id}\\n' BEGIN; ( {cmd}\n) </dev/null 2>&1; printf '\\nVDFW%s-{id}:%s\\n' END \"$?\"\n"
        );
        write_all(&mut input.writer, wrapped.as_bytes())?;

        let deadline = Instant::now() + timeout;
        match self.wait_for(deadline, |buf| parse_frame(buf, id)) {
            Ok(done) => Ok(done),
            Err(ConsoleError::Timeout(partial)) => {
                self.recover(&mut input)?;
                Err(ConsoleError::Timeout(partial_output(&partial, id)))
            }
            Err(e) => Err(e),
        }
    }

    /// After a timeout: ^C the foreground job, then wait for either the interrupted command's end
    /// marker or a fresh sync marker, so the next command starts on a clean console.
    fn recover(&self, input: &mut Input) -> Result<(), ConsoleError> {
        write_all(&mut input.writer, b"\x03")?;
        let sync = input.next_id;
        input.next_id += 1;
        write_all(
            &mut input.writer,
            format!("\nprintf 'VDFW%s-{sync}\\n' SYNC\n").as_bytes(),
        )?;
        let sync_marker = format!("VDFWSYNC-{sync}\n");
        // The interrupted command's end marker (if the shell still prints it) comes before the
        // sync marker, so waiting for the sync marker alone consumes both.
        self.wait_for(Instant::now() + RESYNC_TIMEOUT, |buf| {
            find(buf, sync_marker.as_bytes()).map(|at| (at + sync_marker.len(), ()))
        })
    }
}

fn write_all(w: &mut Box<dyn Write + Send>, bytes: &[u8]) -> Result<(), ConsoleError> {
    w.write_all(bytes)
        .and_then(|()| w.flush())
        .map_err(ConsoleError::Write)
}

/// Finds the complete frame of command `id` in `buf`: Some((end of frame, (output, exit code))).
fn parse_frame(buf: &[u8], id: u64) -> Option<(usize, (String, i32))> {
    let begin = format!("VDFWBEGIN-{id}\n");
    let end = format!("\nVDFWEND-{id}:");
    let body_start = find(buf, begin.as_bytes())? + begin.len();
    let end_at = body_start + find(&buf[body_start..], end.as_bytes())?;
    let code_start = end_at + end.len();
    let code_len = find(&buf[code_start..], b"\n")?;
    let code_text = String::from_utf8_lossy(&buf[code_start..code_start + code_len]);
    // The shell always prints a number here; anything else means the frame was garbled.
    let code = code_text.trim().parse::<i32>().unwrap_or(-1);
    let output = String::from_utf8_lossy(&buf[body_start..end_at]).into_owned();
    Some((code_start + code_len + 1, (output, code)))
}

/// What a timed-out command printed so far (after its begin marker, if it got that far).
fn partial_output(buf: &str, id: u64) -> String {
    let begin = format!("VDFWBEGIN-{id}\n");
    match buf.find(&begin) {
        Some(at) => buf[at + begin.len()..].to_string(),
        None => buf.to_string(),
    }
}

fn read_loop(mut reader: impl Read, mut log: Option<File>, shared: &Shared) {
    let mut chunk = [0u8; 4096];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(f) = log.as_mut() {
            // The log is for humans debugging a failure; losing it must not stop the console.
            let _ = f.write_all(&chunk[..n]);
        }
        let mut st = lock(&shared.state);
        st.buf
            .extend(chunk[..n].iter().copied().filter(|&b| b != b'\r'));
        drop(st);
        shared.arrived.notify_all();
    }
    lock(&shared.state).closed = true;
    shared.arrived.notify_all();
}

#[cfg(test)]
mod tests {
    //! The framing is exercised against a real busybox `sh` over pipes (no tty, so no ^C; the
    //! timeout path is covered by the QEMU test in `tests/harness.rs`).
    use super::*;
    use std::process::{Command, Stdio};

    fn busybox_console() -> Option<(Console, std::process::Child)> {
        let mut child = Command::new("busybox")
            .arg("sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdin = child.stdin.take()?;
        let stdout = child.stdout.take()?;
        Some((Console::new(stdout, stdin, None), child))
    }

    #[test]
    fn frames_output_and_exit_codes() {
        let Some((console, mut child)) = busybox_console() else {
            panic!("busybox not found: run integration/scripts/install-deps.sh");
        };
        let t = Duration::from_secs(10);
        assert_eq!(console.exec("echo hi", t).unwrap(), ("hi\n".into(), 0));
        // No trailing newline is preserved exactly.
        assert_eq!(console.exec("printf abc", t).unwrap(), ("abc".into(), 0));
        assert_eq!(console.exec("exit 3", t).unwrap(), (String::new(), 3));
        // stderr is merged; stdin is /dev/null so `cat` cannot eat the next command.
        assert_eq!(
            console.exec("echo err >&2; cat; echo after", t).unwrap(),
            ("err\nafter\n".into(), 0)
        );
        // Multi-line commands and a trailing comment (the closing paren is on its own line).
        assert_eq!(
            console
                .exec("for i in 1 2; do\n echo $i\ndone # c", t)
                .unwrap(),
            ("1\n2\n".into(), 0)
        );
        // Output that looks like another command's marker does not confuse the parser.
        assert_eq!(
            console.exec("echo VDFWEND-999:0; false", t).unwrap(),
            ("VDFWEND-999:0\n".into(), 1)
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn rejects_unsendable_commands() {
        let Some((console, mut child)) = busybox_console() else {
            panic!("busybox not found: run integration/scripts/install-deps.sh");
        };
        let t = Duration::from_secs(5);
        assert!(matches!(
            console.exec("echo \x03", t),
            Err(ConsoleError::Invalid(_))
        ));
        assert!(matches!(
            console.exec(&"x".repeat(MAX_LINE + 1), t),
            Err(ConsoleError::Invalid(_))
        ));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn parse_frame_needs_the_whole_frame() {
        assert!(parse_frame(b"VDFWBEGIN-4\nout\n", 4).is_none());
        assert!(parse_frame(b"VDFWBEGIN-4\nout\n\nVDFWEND-4:0", 4).is_none());
        let buf = b"# VDFWBEGIN-4\nout\n\nVDFWEND-4:7\n# ";
        assert_eq!(
            parse_frame(buf, 4),
            Some((buf.len() - 2, ("out\n".to_string(), 7)))
        );
        // Another id's frame is not ours.
        assert!(parse_frame(buf, 5).is_none());
    }
}
