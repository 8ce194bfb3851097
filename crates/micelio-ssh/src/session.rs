//! What runs on one SSH channel: an interactive terminal session (with the
//! line editor), a plain line-by-line session (no PTY), or one command
//! (exec request).

use std::time::Duration;

use micelio_partyline::{Reply, Session};
use russh::ChannelId;
use russh::server::Handle;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::editor::{Editor, EditorEvent};
use crate::server::Shared;

/// Input for a channel's task, from the connection handler.
#[derive(Debug)]
pub(crate) enum ChanInput {
    /// Bytes typed or piped by the client.
    Data(Vec<u8>),
    /// The terminal's new width.
    Resize(u16),
    /// The client will send no more.
    Eof,
}

/// Longest a plain (no PTY) input line may grow before it is cut.
const MAX_PLAIN_LINE: usize = 8192;

/// Writes to one channel, with the write deadline.
struct Out {
    handle: Handle,
    channel: ChannelId,
    timeout: Duration,
    broken: bool,
}

impl Out {
    fn new(shared: &Shared, handle: Handle, channel: ChannelId) -> Self {
        Self {
            handle,
            channel,
            timeout: shared.write_timeout,
            broken: false,
        }
    }

    async fn write(&mut self, bytes: Vec<u8>) {
        if self.broken || bytes.is_empty() {
            return;
        }
        match tokio::time::timeout(self.timeout, self.handle.data(self.channel, bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => self.broken = true,
            Err(_) => {
                info!("ssh client stopped reading: closing its session");
                self.broken = true;
            }
        }
    }

    async fn finish(&mut self, status: i32) {
        if !self.broken {
            let code = u32::try_from(status).unwrap_or(1);
            let _ = self.handle.exit_status_request(self.channel, code).await;
            let _ = self.handle.eof(self.channel).await;
        }
        let _ = self.handle.close(self.channel).await;
    }
}

fn crlf(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 8);
    for line in text.split('\n') {
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn plain(text: &str) -> Vec<u8> {
    let mut s = text.to_owned();
    s.push('\n');
    s.into_bytes()
}

fn prompt(nick: &str) -> String {
    format!("{nick}> ")
}

/// An interactive session: prompt, line editor, lines printed above the
/// input.
pub(crate) async fn run_interactive(
    shared: &Shared,
    handle: Handle,
    channel: ChannelId,
    user: &micelio_partyline::Login,
    width: u16,
    mut input: mpsc::Receiver<ChanInput>,
) {
    let mut out = Out::new(shared, handle, channel);
    let Ok(mut session) = shared.party.join_as(user).await else {
        out.write(crlf("the partyline is not available")).await;
        out.finish(1).await;
        return;
    };
    let mut editor = Editor::new(prompt(session.nick()), width);
    let banner = format!(
        "Welcome to the micelio partyline on {}, {}. Type /help for commands, /quit to leave.",
        shared.party.node_name(),
        session.nick()
    );
    out.write(crlf(&banner)).await;
    // History and notices queued at join time go above the prompt.
    let mut buf = Vec::new();
    while let Some(o) = session.try_recv() {
        buf.extend(crlf(&o.to_string()));
    }
    buf.extend(editor.render_line());
    out.write(buf).await;

    loop {
        if out.broken {
            break;
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => {
                out.write(editor.print_above("*** the node is shutting down")).await;
                break;
            }
            o = session.recv() => match o {
                Some(o) => out.write(editor.print_above(&o.to_string())).await,
                None => break,
            },
            i = input.recv() => match i {
                None | Some(ChanInput::Eof) => break,
                Some(ChanInput::Resize(w)) => {
                    editor.set_width(w);
                    out.write(editor.render_line()).await;
                }
                Some(ChanInput::Data(bytes)) => {
                    if !handle_keys(&mut editor, &mut session, &mut out, &bytes).await {
                        break;
                    }
                }
            },
        }
    }
    debug!(nick = session.nick(), "interactive session ended");
    drop(session);
    out.finish(0).await;
}

/// Feeds typed bytes to the editor and acts on what it says; false when the
/// session should end.
async fn handle_keys(
    editor: &mut Editor,
    session: &mut Session,
    out: &mut Out,
    bytes: &[u8],
) -> bool {
    let mut buf = Vec::new();
    let mut keep = true;
    for ev in editor.feed(bytes) {
        match ev {
            EditorEvent::Redraw => buf.extend(editor.render_line()),
            EditorEvent::Bell => buf.push(0x07),
            // A Redraw follows every Interrupt and Submit: the empty prompt is
            // drawn then.
            EditorEvent::Interrupt => buf.extend_from_slice(b"^C\r\n"),
            EditorEvent::Eof => {
                buf.extend_from_slice(b"\r\n");
                keep = false;
                break;
            }
            EditorEvent::Submit(line) => {
                buf.extend(editor.render_submitted(&line));
                let reply = session.input(&line).await;
                if let Some(n) = &reply.new_nick {
                    editor.set_prompt(prompt(n));
                }
                if !reply.text.is_empty() {
                    buf.extend(crlf(&reply.text));
                }
                if reply.quit {
                    keep = false;
                    break;
                }
            }
        }
    }
    out.write(buf).await;
    keep
}

/// A session without a PTY: each input line is a chat line or a command;
/// replies and incoming lines are printed as plain text. The exit status
/// is that of the last command.
pub(crate) async fn run_plain(
    shared: &Shared,
    handle: Handle,
    channel: ChannelId,
    user: &micelio_partyline::Login,
    mut input: mpsc::Receiver<ChanInput>,
) {
    let mut out = Out::new(shared, handle, channel);
    let Ok(mut session) = shared.party.join_as(user).await else {
        out.write(plain("the partyline is not available")).await;
        out.finish(1).await;
        return;
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut status = 0;
    let mut quit = false;
    while !quit && !out.broken {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            o = session.recv() => match o {
                Some(o) => out.write(plain(&o.to_string())).await,
                None => break,
            },
            i = input.recv() => match i {
                None | Some(ChanInput::Eof) => {
                    if !pending.is_empty() {
                        let line = String::from_utf8_lossy(&pending).into_owned();
                        let reply = session.input(&line).await;
                        status = reply.status;
                        write_reply(&mut out, &reply).await;
                    }
                    break;
                }
                Some(ChanInput::Resize(_)) => {}
                Some(ChanInput::Data(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                        let raw: Vec<u8> = pending.drain(..=pos).collect();
                        let line = String::from_utf8_lossy(&raw).into_owned();
                        let reply = session.input(&line).await;
                        status = reply.status;
                        write_reply(&mut out, &reply).await;
                        if reply.quit {
                            quit = true;
                            break;
                        }
                    }
                    if pending.len() > MAX_PLAIN_LINE {
                        pending.clear();
                        out.write(plain("error: line too long, dropped")).await;
                        status = 1;
                    }
                }
            },
        }
    }
    // Lines said just before the end are shown before leaving.
    while let Some(o) = session.try_recv() {
        out.write(plain(&o.to_string())).await;
    }
    drop(session);
    out.finish(status).await;
}

async fn write_reply(out: &mut Out, reply: &Reply) {
    if !reply.text.is_empty() {
        out.write(plain(&reply.text)).await;
    }
}

/// One command (`ssh host '/who'`): run, print, exit with its status.
pub(crate) async fn run_exec(
    shared: &Shared,
    handle: Handle,
    channel: ChannelId,
    user: &micelio_partyline::Login,
    command: &str,
) {
    let mut out = Out::new(shared, handle, channel);
    let status = match shared.party.join_quiet_as(user).await {
        Ok(mut session) => {
            let reply = session.input(command.trim()).await;
            write_reply(&mut out, &reply).await;
            reply.status
        }
        Err(_) => {
            out.write(plain("the partyline is not available")).await;
            1
        }
    };
    out.finish(status).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_ends_every_line_once() {
        assert_eq!(crlf("a"), b"a\r\n");
        assert_eq!(crlf("a\nb"), b"a\r\nb\r\n");
        assert_eq!(crlf("a\r\nb"), b"a\r\nb\r\n", "no doubled CR");
        assert_eq!(crlf(""), b"\r\n");
    }

    #[test]
    fn plain_text_ends_with_one_newline() {
        assert_eq!(plain("a\nb"), b"a\nb\n");
        assert_eq!(prompt("zoe"), "zoe> ");
    }
}
