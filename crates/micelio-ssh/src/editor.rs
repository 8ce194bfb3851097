//! The terminal line editor of interactive partyline sessions.
//!
//! [`Editor`] is a pure state machine: [`Editor::feed`] takes the raw bytes
//! read from the SSH channel, in whatever chunks they arrive (an escape
//! sequence or a UTF-8 character may be split across reads), and returns
//! [`EditorEvent`]s; [`Editor::render_line`], [`Editor::render_submitted`]
//! and [`Editor::print_above`] return the exact bytes to write back. It does
//! no I/O, keeps no clock, and its memory is bounded whatever it is fed:
//! the line holds at most [`MAX_LINE_BYTES`], the history [`MAX_HISTORY`]
//! lines, and a partial escape sequence or character a few bytes.
//! `feed` does a bounded amount of work per input byte.
//!
//! # Driving it
//!
//! ```
//! use micelio_ssh::editor::{Editor, EditorEvent};
//!
//! let mut editor = Editor::new("alice> ", 80);
//! let mut screen = editor.render_line();
//! for event in editor.feed(b"hello\r") {
//!     match event {
//!         EditorEvent::Redraw => screen.extend(editor.render_line()),
//!         EditorEvent::Submit(line) => {
//!             screen.extend(editor.render_submitted(&line));
//!             // Handle the line; print any output with `print_above`.
//!         }
//!         EditorEvent::Interrupt => screen.extend(b"^C\r\n"),
//!         EditorEvent::Eof => { /* close the session */ }
//!         EditorEvent::Bell => screen.push(0x07),
//!     }
//! }
//! assert!(screen.ends_with(b"\r\x1b[Kalice> hello\r\n\r\x1b[Kalice> "));
//! // Chat from elsewhere, printed above what the user is typing:
//! editor.feed(b"wor");
//! assert_eq!(editor.print_above("<bob> hi"), b"\r\x1b[K<bob> hi\r\n\r\x1b[Kalice> wor");
//! ```
//!
//! `render_line` always renders the state reached at the end of the whole
//! `feed` call, so `feed` emits at most one [`EditorEvent::Redraw`], as its
//! last event, and emits it after every `Submit` and `Interrupt` (the caller
//! has moved to a fresh row and must draw the empty prompt there). Bells are
//! coalesced: never two in a row.
//!
//! # Keys
//!
//! | input | effect |
//! | --- | --- |
//! | printable character (not a control, C1 included) | inserted at the cursor |
//! | Enter: CR, LF or CRLF (counted once) | [`EditorEvent::Submit`] |
//! | Backspace (DEL `0x7f`, BS `0x08`) | deletes the grapheme before the cursor |
//! | Delete `ESC [ 3 ~` | deletes the grapheme under the cursor |
//! | Ctrl-D | empty line: [`EditorEvent::Eof`]; otherwise like Delete |
//! | Ctrl-U / Ctrl-K | deletes from the start to the cursor / from the cursor to the end |
//! | Ctrl-W, Alt-Backspace (`ESC DEL`) | deletes the word before the cursor (spaces first) |
//! | Ctrl-A, Home (`ESC [ H`, `ESC O H`, `ESC [ 1 ~`, `ESC [ 7 ~`) | cursor to the start |
//! | Ctrl-E, End (`ESC [ F`, `ESC O F`, `ESC [ 4 ~`, `ESC [ 8 ~`) | cursor to the end |
//! | Left / Right (`ESC [ D` / `ESC [ C`, `ESC O D` / `ESC O C`, Ctrl-B / Ctrl-F) | one grapheme |
//! | Up / Down (`ESC [ A` / `ESC [ B`, `ESC O A` / `ESC O B`, Ctrl-P / Ctrl-N) | history |
//! | Ctrl-C | clears the line: [`EditorEvent::Interrupt`] |
//! | Ctrl-L | [`EditorEvent::Redraw`] |
//! | Tab | ignored when typed (kept free for completion); [`PASTE_TAB_SPACES`] spaces inside a paste |
//!
//! Editing works on extended grapheme clusters: `e` + U+0301, a flag or a
//! ZWJ emoji family is one step for the arrows, Backspace and Delete.
//!
//! Every other escape sequence (CSI with parameters such as Ctrl-arrows or
//! mouse reports, SS3 keys such as F1, Alt+key `ESC x`) is consumed whole and
//! ignored: it is never inserted as text. A lone `ESC` waits for the next
//! bytes. Invalid UTF-8 is dropped, as are other control characters.
//!
//! **Bracketed paste** (`ESC [ 200 ~` … `ESC [ 201 ~`): the pasted text is
//! inserted literally: control characters and escape sequences inside it
//! are dropped, never executed (a pasted Ctrl-D does not quit), tabs become
//! spaces, and each newline (CR, LF or CRLF) submits the line so far, so a
//! pasted block of lines arrives line by line, as if typed. Ctrl-C inside a
//! paste ends the paste and interrupts, a way out should a client never send
//! the closing marker.
//!
//! Input beyond [`MAX_LINE_BYTES`] rings the bell and is dropped.
//!
//! **History** keeps the last [`MAX_HISTORY`] submitted lines, without
//! blank lines or consecutive duplicates. Going up saves the line being
//! typed; coming back down past the newest entry restores it. A recalled
//! entry may be edited and submitted; moving to another entry drops the edit.
//!
//! **Rendering** keeps the input on one terminal row: when prompt and line
//! do not fit in the terminal width, the line scrolls horizontally so that
//! the cursor stays visible. Display widths come from `unicode-width` (CJK
//! and emoji are two columns). The prompt is plain text: control characters
//! in it are dropped.

use std::collections::VecDeque;
use std::mem;

use unicode_segmentation::{GraphemeCursor, UnicodeSegmentation};
use unicode_width::UnicodeWidthStr;

/// Longest line, in bytes of UTF-8: the partyline's chat-line limit.
/// Input that would make the line longer rings the bell and is dropped.
pub const MAX_LINE_BYTES: usize = 4096;

/// Submitted lines kept for Up/Down.
pub const MAX_HISTORY: usize = 100;

/// Spaces inserted for a Tab inside a bracketed paste.
pub const PASTE_TAB_SPACES: usize = 4;

/// Bytes of a CSI sequence (between `ESC [` and the final byte) worth
/// keeping: the longest one understood is `201`. Longer sequences are still
/// consumed, and ignored.
const MAX_CSI_PARAMS: usize = 8;

/// What the caller does after [`Editor::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditorEvent {
    /// The line or the cursor changed: write [`Editor::render_line`].
    /// At most one per `feed`, always the last event.
    Redraw,
    /// Enter: the line, now in the history; the editor is empty. Write
    /// [`Editor::render_submitted`] (the line on its row, then a new row),
    /// then handle the line. A `Redraw` follows.
    Submit(String),
    /// Ctrl-C: the line was cleared. Write `"^C\r\n"`; a `Redraw` follows.
    Interrupt,
    /// Ctrl-D on an empty line: the user wants to leave.
    Eof,
    /// An edit that could not happen (Backspace at the start, end of the
    /// history, line full): write `"\x07"`.
    Bell,
}

/// The line editor of one terminal. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Editor {
    /// Plain text, no control characters.
    prompt: String,
    prompt_width: usize,
    /// Terminal columns; 0 when unknown (no horizontal scrolling).
    width: u16,
    /// At most `MAX_LINE_BYTES`, no control characters.
    line: String,
    /// Byte offset into `line`, on a char boundary.
    cursor: usize,
    /// Oldest first.
    history: VecDeque<String>,
    /// The history entry shown, or `None` when editing the draft.
    browsing: Option<usize>,
    /// The line being typed when the user went up into the history.
    draft: String,
    parse: Parse,
    /// The previous byte was a CR that submitted: a following LF is its pair.
    swallow_lf: bool,
    /// Inside a bracketed paste.
    paste: bool,
}

/// Where the input decoder is, between bytes. Bounded: at most a few bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parse {
    Ground,
    /// Part of a multi-byte UTF-8 character; `alt` when it follows an ESC
    /// (Alt+key: the character is dropped).
    Utf8 {
        buf: [u8; 4],
        len: u8,
        need: u8,
        alt: bool,
    },
    /// After ESC.
    Esc,
    /// After `ESC [`: parameter and intermediate bytes so far.
    Csi {
        buf: [u8; MAX_CSI_PARAMS],
        len: u8,
        overflow: bool,
    },
    /// After `ESC O`; `params` when digits came (modifiers: ignored).
    Ss3 {
        params: bool,
    },
}

/// A decoded key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Char(char),
    Enter,
    Tab,
    Backspace,
    Delete,
    CtrlD,
    Home,
    End,
    Left,
    Right,
    Up,
    Down,
    KillToStart,
    KillToEnd,
    KillWord,
    Interrupt,
    Refresh,
    PasteStart,
    PasteEnd,
}

/// The events of one `feed` call.
#[derive(Debug, Default)]
struct Out {
    events: Vec<EditorEvent>,
    redraw: bool,
}

impl Out {
    fn bell(&mut self) {
        if self.events.last() != Some(&EditorEvent::Bell) {
            self.events.push(EditorEvent::Bell);
        }
    }

    fn finish(mut self) -> Vec<EditorEvent> {
        if self.redraw {
            self.events.push(EditorEvent::Redraw);
        }
        self.events
    }
}

impl Editor {
    /// An empty editor showing `prompt` on a terminal `width` columns wide
    /// (0 if unknown).
    pub fn new(prompt: impl Into<String>, width: u16) -> Self {
        let mut editor = Editor {
            prompt: String::new(),
            prompt_width: 0,
            width,
            line: String::new(),
            cursor: 0,
            history: VecDeque::new(),
            browsing: None,
            draft: String::new(),
            parse: Parse::Ground,
            swallow_lf: false,
            paste: false,
        };
        editor.set_prompt(prompt);
        editor
    }

    /// Feeds bytes read from the terminal; returns what the caller must do,
    /// in order. Partial sequences wait for the next call.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<EditorEvent> {
        let mut out = Out::default();
        for &byte in bytes {
            self.byte(byte, &mut out);
        }
        out.finish()
    }

    /// The terminal was resized (SSH window-change). The caller redraws.
    pub fn set_width(&mut self, width: u16) {
        self.width = width;
    }

    /// Changes the prompt (after `/nick`, say). Control characters are
    /// dropped. The caller redraws.
    pub fn set_prompt(&mut self, prompt: impl Into<String>) {
        let mut prompt = prompt.into();
        prompt.retain(|c| !c.is_control());
        self.prompt_width = display_width(&prompt);
        self.prompt = prompt;
    }

    /// The line being edited.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The cursor, in characters (Unicode scalar values) from the start of
    /// the line.
    pub fn cursor(&self) -> usize {
        self.line[..self.cursor].chars().count()
    }

    /// The bytes that redraw the input row: `"\r\x1b[K"`, the prompt, the
    /// line (the part that fits, when it does not), then the cursor moved
    /// left over what follows it.
    pub fn render_line(&self) -> Vec<u8> {
        let (start, end) = self.visible_range();
        let mut out = Vec::with_capacity(16 + self.prompt.len() + end - start);
        out.extend_from_slice(b"\r\x1b[K");
        out.extend_from_slice(self.prompt.as_bytes());
        out.extend_from_slice(&self.line.as_bytes()[start..end]);
        let back = display_width(&self.line[self.cursor.clamp(start, end)..end]);
        if back > 0 {
            out.extend_from_slice(format!("\x1b[{back}D").as_bytes());
        }
        out
    }

    /// The bytes to write on [`EditorEvent::Submit`]: the input row redrawn
    /// with the prompt and the whole submitted `line` (wrapping if long),
    /// then a new row. Control characters in `line` are dropped.
    pub fn render_submitted(&self, line: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.prompt.len() + line.len());
        out.extend_from_slice(b"\r\x1b[K");
        out.extend_from_slice(self.prompt.as_bytes());
        push_printable(&mut out, line);
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The bytes that print `text` above the input row without disturbing
    /// it: erase the row, print each line of `text` (LF becomes CRLF; control
    /// characters other than tab, escape sequences' ESC included, are
    /// dropped; one final LF is optional), then redraw prompt, line and
    /// cursor.
    pub fn print_above(&self, text: &str) -> Vec<u8> {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let mut out = Vec::with_capacity(text.len() + 32 + self.prompt.len() + self.line.len());
        out.extend_from_slice(b"\r\x1b[K");
        for line in text.split('\n') {
            push_printable(&mut out, line);
            out.extend_from_slice(b"\r\n");
        }
        out.extend(self.render_line());
        out
    }

    /// Bytes held back waiting for the rest of a sequence.
    #[cfg(test)]
    fn pending_len(&self) -> usize {
        match self.parse {
            Parse::Ground => 0,
            Parse::Utf8 { len, alt, .. } => usize::from(len) + usize::from(alt),
            Parse::Esc => 1,
            Parse::Csi { len, .. } => 2 + usize::from(len),
            Parse::Ss3 { .. } => 2,
        }
    }

    // ---- decoding ----

    fn byte(&mut self, byte: u8, out: &mut Out) {
        if mem::take(&mut self.swallow_lf) && byte == b'\n' {
            return;
        }
        // A byte that breaks a sequence ends it and is decoded afresh.
        if !self.step(byte, out) {
            self.parse = Parse::Ground;
            self.ground(byte, out);
        }
    }

    /// Decodes one byte in the current state; false when it does not belong
    /// to the pending sequence (which is dropped).
    fn step(&mut self, byte: u8, out: &mut Out) -> bool {
        match self.parse {
            Parse::Ground => self.ground(byte, out),
            Parse::Utf8 {
                mut buf,
                len,
                need,
                alt,
            } => {
                if byte & 0xc0 != 0x80 {
                    return false;
                }
                buf[usize::from(len)] = byte;
                let len = len + 1;
                if len < need {
                    self.parse = Parse::Utf8 {
                        buf,
                        len,
                        need,
                        alt,
                    };
                    return true;
                }
                self.parse = Parse::Ground;
                // Overlong forms, surrogates and values past U+10FFFF fail here.
                if let Some(c) = std::str::from_utf8(&buf[..usize::from(len)])
                    .ok()
                    .and_then(|s| s.chars().next())
                    && !alt
                {
                    self.key(Key::Char(c), out);
                }
            }
            Parse::Esc => match byte {
                b'[' => {
                    self.parse = Parse::Csi {
                        buf: [0; MAX_CSI_PARAMS],
                        len: 0,
                        overflow: false,
                    }
                }
                b'O' => self.parse = Parse::Ss3 { params: false },
                // ESC ESC: the first one was alone.
                0x1b => {}
                0x7f => {
                    self.parse = Parse::Ground;
                    self.key(Key::KillWord, out);
                }
                // Alt+key: ignored.
                0x20..=0x7e => self.parse = Parse::Ground,
                0x80..=0xff => {
                    self.parse = match utf8_len(byte) {
                        Some(need) => Parse::Utf8 {
                            buf: [byte, 0, 0, 0],
                            len: 1,
                            need,
                            alt: true,
                        },
                        None => Parse::Ground,
                    }
                }
                _ => return false,
            },
            Parse::Csi {
                mut buf,
                len,
                overflow,
            } => match byte {
                0x20..=0x3f => {
                    let keep = usize::from(len) < MAX_CSI_PARAMS && !overflow;
                    if keep {
                        buf[usize::from(len)] = byte;
                    }
                    self.parse = Parse::Csi {
                        buf,
                        len: len + u8::from(keep),
                        overflow: !keep,
                    };
                }
                0x40..=0x7e => {
                    self.parse = Parse::Ground;
                    if !overflow && let Some(key) = csi_key(&buf[..usize::from(len)], byte) {
                        self.key(key, out);
                    }
                }
                _ => return false,
            },
            Parse::Ss3 { params } => match byte {
                0x30..=0x3f => self.parse = Parse::Ss3 { params: true },
                0x40..=0x7e => {
                    self.parse = Parse::Ground;
                    if !params && let Some(key) = ss3_key(byte) {
                        self.key(key, out);
                    }
                }
                _ => return false,
            },
        }
        true
    }

    /// Decodes a byte outside any sequence.
    fn ground(&mut self, byte: u8, out: &mut Out) {
        let key = match byte {
            0x20..=0x7e => Key::Char(char::from(byte)),
            0x1b => {
                self.parse = Parse::Esc;
                return;
            }
            0x80..=0xff => {
                // Stray continuation bytes and invalid leads are dropped.
                if let Some(need) = utf8_len(byte) {
                    self.parse = Parse::Utf8 {
                        buf: [byte, 0, 0, 0],
                        len: 1,
                        need,
                        alt: false,
                    };
                }
                return;
            }
            0x01 => Key::Home,
            0x02 => Key::Left,
            0x03 => Key::Interrupt,
            0x04 => Key::CtrlD,
            0x05 => Key::End,
            0x06 => Key::Right,
            0x08 | 0x7f => Key::Backspace,
            0x09 => Key::Tab,
            0x0a => Key::Enter,
            0x0b => Key::KillToEnd,
            0x0c => Key::Refresh,
            0x0d => {
                self.key(Key::Enter, out);
                self.swallow_lf = true;
                return;
            }
            0x0e => Key::Down,
            0x10 => Key::Up,
            0x15 => Key::KillToStart,
            0x17 => Key::KillWord,
            _ => return,
        };
        self.key(key, out);
    }

    // ---- editing ----

    fn key(&mut self, key: Key, out: &mut Out) {
        if self.paste
            && !matches!(
                key,
                Key::Char(_) | Key::Enter | Key::Tab | Key::PasteEnd | Key::Interrupt
            )
        {
            return;
        }
        match key {
            Key::Char(c) => self.insert(c, out),
            Key::Enter => self.submit(out),
            Key::Tab => {
                if self.paste {
                    for _ in 0..PASTE_TAB_SPACES {
                        self.insert(' ', out);
                    }
                }
            }
            Key::Backspace => match self.prev_boundary() {
                Some(at) => {
                    self.line.replace_range(at..self.cursor, "");
                    self.cursor = at;
                    out.redraw = true;
                }
                None => out.bell(),
            },
            Key::CtrlD if self.line.is_empty() => out.events.push(EditorEvent::Eof),
            Key::Delete | Key::CtrlD => match self.next_boundary() {
                Some(at) => {
                    self.line.replace_range(self.cursor..at, "");
                    out.redraw = true;
                }
                None => out.bell(),
            },
            Key::Home => self.move_to(0, out),
            Key::End => self.move_to(self.line.len(), out),
            Key::Left => match self.prev_boundary() {
                Some(at) => self.move_to(at, out),
                None => out.bell(),
            },
            Key::Right => match self.next_boundary() {
                Some(at) => self.move_to(at, out),
                None => out.bell(),
            },
            Key::Up => self.history_up(out),
            Key::Down => self.history_down(out),
            Key::KillToStart => self.kill(0, out),
            Key::KillToEnd => {
                if self.cursor == self.line.len() {
                    out.bell();
                } else {
                    self.line.truncate(self.cursor);
                    out.redraw = true;
                }
            }
            Key::KillWord => {
                let before = self.line[..self.cursor].trim_end_matches(char::is_whitespace);
                let start = before
                    .char_indices()
                    .rev()
                    .find(|&(_, c)| c.is_whitespace())
                    .map_or(0, |(i, c)| i + c.len_utf8());
                self.kill(start, out);
            }
            Key::Interrupt => {
                self.paste = false;
                self.clear();
                out.events.push(EditorEvent::Interrupt);
                out.redraw = true;
            }
            Key::Refresh => out.redraw = true,
            Key::PasteStart => self.paste = true,
            Key::PasteEnd => self.paste = false,
        }
    }

    fn insert(&mut self, c: char, out: &mut Out) {
        if c.is_control() {
            return;
        }
        if self.line.len() + c.len_utf8() > MAX_LINE_BYTES {
            out.bell();
            return;
        }
        self.line.insert(self.cursor, c);
        self.cursor += c.len_utf8();
        out.redraw = true;
    }

    fn move_to(&mut self, at: usize, out: &mut Out) {
        if at != self.cursor {
            self.cursor = at;
            out.redraw = true;
        }
    }

    /// Deletes from `start` to the cursor; the bell when that is nothing.
    fn kill(&mut self, start: usize, out: &mut Out) {
        if start == self.cursor {
            out.bell();
        } else {
            self.line.replace_range(start..self.cursor, "");
            self.cursor = start;
            out.redraw = true;
        }
    }

    fn submit(&mut self, out: &mut Out) {
        let line = mem::take(&mut self.line);
        self.clear();
        if !line.trim().is_empty() && self.history.back() != Some(&line) {
            if self.history.len() == MAX_HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(line.clone());
        }
        out.events.push(EditorEvent::Submit(line));
        out.redraw = true;
    }

    /// Empties the line and leaves the history.
    fn clear(&mut self) {
        self.line.clear();
        self.cursor = 0;
        self.browsing = None;
        self.draft.clear();
    }

    fn history_up(&mut self, out: &mut Out) {
        let at = match self.browsing {
            None if !self.history.is_empty() => {
                self.draft = mem::take(&mut self.line);
                self.history.len() - 1
            }
            Some(at) if at > 0 => at - 1,
            _ => return out.bell(),
        };
        self.show_entry(at, out);
    }

    fn history_down(&mut self, out: &mut Out) {
        match self.browsing {
            None => out.bell(),
            Some(at) if at + 1 < self.history.len() => self.show_entry(at + 1, out),
            Some(_) => {
                self.browsing = None;
                self.line = mem::take(&mut self.draft);
                self.cursor = self.line.len();
                out.redraw = true;
            }
        }
    }

    fn show_entry(&mut self, at: usize, out: &mut Out) {
        self.browsing = Some(at);
        self.line.clear();
        self.line.push_str(&self.history[at]);
        self.cursor = self.line.len();
        out.redraw = true;
    }

    /// The grapheme boundary before the cursor, if any.
    fn prev_boundary(&self) -> Option<usize> {
        if self.cursor == 0 {
            return None;
        }
        let mut graphemes = GraphemeCursor::new(self.cursor, self.line.len(), true);
        // The whole line is the chunk, so no context is ever missing.
        match graphemes.prev_boundary(&self.line, 0) {
            Ok(Some(at)) => Some(at),
            _ => self.line[..self.cursor]
                .char_indices()
                .next_back()
                .map(|(i, _)| i),
        }
    }

    /// The grapheme boundary after the cursor, if any.
    fn next_boundary(&self) -> Option<usize> {
        if self.cursor == self.line.len() {
            return None;
        }
        let mut graphemes = GraphemeCursor::new(self.cursor, self.line.len(), true);
        match graphemes.next_boundary(&self.line, 0) {
            Ok(Some(at)) => Some(at),
            _ => self.line[self.cursor..]
                .chars()
                .next()
                .map(|c| self.cursor + c.len_utf8()),
        }
    }

    /// The byte range of the line shown: all of it when it fits (or the
    /// width is unknown or absurd), else a window of whole graphemes that
    /// holds the cursor, leaving the last column free.
    fn visible_range(&self) -> (usize, usize) {
        let all = (0, self.line.len());
        let Some(room) = usize::from(self.width)
            .checked_sub(self.prompt_width + 1)
            .filter(|&room| room > 0)
        else {
            return all;
        };
        let graphemes: Vec<(usize, usize)> = self
            .line
            .grapheme_indices(true)
            .map(|(at, g)| (at, g.width()))
            .collect();
        if graphemes.iter().map(|&(_, w)| w).sum::<usize>() <= room {
            return all;
        }
        // The first grapheme at or after the cursor.
        let at_cursor = graphemes.partition_point(|&(at, _)| at < self.cursor);
        let (mut first, mut used) = (at_cursor, 0);
        while first > 0 && used + graphemes[first - 1].1 <= room {
            first -= 1;
            used += graphemes[first].1;
        }
        let mut last = at_cursor;
        while last < graphemes.len() && used + graphemes[last].1 <= room {
            used += graphemes[last].1;
            last += 1;
        }
        let offset = |i: usize| graphemes.get(i).map_or(self.line.len(), |&(at, _)| at);
        (offset(first), offset(last))
    }
}

/// Bytes in a UTF-8 character that starts with `lead`, if it may start one.
fn utf8_len(lead: u8) -> Option<u8> {
    match lead {
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

/// The key of `ESC [ params final`, if it is one the editor knows.
fn csi_key(params: &[u8], last: u8) -> Option<Key> {
    Some(match (params, last) {
        (b"", b'A') => Key::Up,
        (b"", b'B') => Key::Down,
        (b"", b'C') => Key::Right,
        (b"", b'D') => Key::Left,
        (b"", b'H') | (b"1" | b"7", b'~') => Key::Home,
        (b"", b'F') | (b"4" | b"8", b'~') => Key::End,
        (b"3", b'~') => Key::Delete,
        (b"200", b'~') => Key::PasteStart,
        (b"201", b'~') => Key::PasteEnd,
        _ => return None,
    })
}

/// The key of `ESC O final`, if it is one the editor knows.
fn ss3_key(last: u8) -> Option<Key> {
    Some(match last {
        b'A' => Key::Up,
        b'B' => Key::Down,
        b'C' => Key::Right,
        b'D' => Key::Left,
        b'H' => Key::Home,
        b'F' => Key::End,
        _ => return None,
    })
}

/// Terminal columns of `text`, grapheme by grapheme.
fn display_width(text: &str) -> usize {
    text.graphemes(true).map(UnicodeWidthStr::width).sum()
}

/// Appends `text` without its control characters (tabs kept).
fn push_printable(out: &mut Vec<u8>, text: &str) {
    let mut buf = [0; 4];
    for c in text.chars().filter(|&c| c == '\t' || !c.is_control()) {
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::EditorEvent::{Bell, Eof, Interrupt, Redraw, Submit};
    use super::*;

    const LEFT: &str = "\x1b[D";
    const RIGHT: &str = "\x1b[C";
    const UP: &str = "\x1b[A";
    const DOWN: &str = "\x1b[B";
    const HOME: &str = "\x1b[H";
    const DEL: &str = "\x1b[3~";
    const BS: &str = "\x7f";
    const PASTE: &str = "\x1b[200~";
    const END_PASTE: &str = "\x1b[201~";

    fn editor() -> Editor {
        Editor::new("> ", 80)
    }

    fn submit(line: &str) -> EditorEvent {
        Submit(line.to_owned())
    }

    /// Feeds `chunks` one `feed` call each; checks the line, the cursor (in
    /// chars) and all the events.
    #[track_caller]
    fn check(chunks: &[&str], line: &str, cursor: usize, events: &[EditorEvent]) -> Editor {
        let mut ed = editor();
        let got: Vec<_> = chunks.iter().flat_map(|c| ed.feed(c.as_bytes())).collect();
        assert_eq!(
            (ed.line(), ed.cursor(), got.as_slice()),
            (line, cursor, events),
            "input {chunks:?}"
        );
        ed
    }

    /// `check` of a single chunk.
    #[track_caller]
    fn check1(input: &str, line: &str, cursor: usize, events: &[EditorEvent]) {
        check(&[input], line, cursor, events);
    }

    /// Events that do not depend on how the input was chunked: no Redraw,
    /// no Bell twice in a row.
    fn significant(events: impl IntoIterator<Item = EditorEvent>) -> Vec<EditorEvent> {
        let mut out: Vec<EditorEvent> = Vec::new();
        for e in events {
            if e != Redraw && !(e == Bell && out.last() == Some(&Bell)) {
                out.push(e);
            }
        }
        out
    }

    /// Feeds `input` whole, byte by byte, and split in two and in three at
    /// every pair of points: the same line, cursor and significant events.
    #[track_caller]
    fn check_splits(input: &[u8], line: &str, cursor: usize, events: &[EditorEvent]) {
        let run = |chunks: &[&[u8]]| {
            let mut ed = editor();
            let ev = significant(chunks.iter().flat_map(|c| ed.feed(c)));
            assert_eq!(
                (ed.line(), ed.cursor(), ev.as_slice()),
                (line, cursor, events),
                "chunks {chunks:?}"
            );
            assert_eq!(ed.pending_len(), 0, "chunks {chunks:?}");
        };
        run(&[input]);
        run(&input.chunks(1).collect::<Vec<_>>());
        for i in 0..=input.len() {
            for j in i..=input.len() {
                run(&[&input[..i], &input[i..j], &input[j..]]);
            }
        }
    }

    /// A tiny seeded xorshift64 generator.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    // ---- typing ----

    #[test]
    fn typing_inserts_at_the_cursor() {
        check1("hello", "hello", 5, &[Redraw]);
        check(&["h", "i"], "hi", 2, &[Redraw, Redraw]);
        check1(&format!("helo{LEFT}l"), "hello", 4, &[Redraw]);
        check1("héllo €😀 日本", "héllo €😀 日本", 11, &[Redraw]);
    }

    #[test]
    fn control_characters_are_not_inserted() {
        check1("a\x00\x07\x1f\x11b", "ab", 2, &[Redraw]);
        // C1 controls as UTF-8 (U+0085, U+009B) are controls too.
        check1("a\u{85}\u{9b}b", "ab", 2, &[Redraw]);
    }

    #[test]
    fn tab_is_ignored_when_typed() {
        check1("a\tb", "ab", 2, &[Redraw]);
        check1("\t", "", 0, &[]);
    }

    #[test]
    fn invalid_utf8_is_dropped() {
        check(&["a\u{e9}"], "aé", 2, &[Redraw]);
        let mut ed = editor();
        // Stray continuation, invalid leads, overlong, surrogate, > U+10FFFF,
        // a truncated character interrupted by ASCII.
        ed.feed(b"a\x80\xffb\xc0\xafc\xe0\x80\x80d\xed\xa0\x80e\xf4\x90\x80\x80f\xe2\x82g");
        assert_eq!(ed.line(), "abcdefg");
        assert_eq!(ed.pending_len(), 0);
        // A truncated character followed by ESC: the escape still works.
        ed.feed(b"\xe2\x82\x1b[D");
        assert_eq!((ed.line(), ed.cursor()), ("abcdefg", 6));
    }

    // ---- deleting ----

    #[test]
    fn backspace_deletes_one_character_of_any_size() {
        check1(&format!("ab{BS}"), "a", 1, &[Redraw]);
        check1("ab\x08", "a", 1, &[Redraw]);
        for c in ["é", "€", "😀", "日"] {
            check1(&format!("a{c}{BS}"), "a", 1, &[Redraw]);
            check1(&format!("a{c}b{LEFT}{BS}"), "ab", 1, &[Redraw]);
        }
    }

    #[test]
    fn backspace_deletes_whole_graphemes() {
        // e + combining acute, a flag (two regional indicators), a ZWJ family,
        // a thumbs up with a skin tone.
        for g in ["e\u{301}", "🇫🇷", "👨\u{200d}👩\u{200d}👧", "👍🏽"] {
            check1(&format!("a{g}{BS}"), "a", 1, &[Redraw]);
            check1(&format!("a{g}{LEFT}{DEL}"), "a", 1, &[Redraw]);
            let chars = g.chars().count();
            check1(&format!("{g}{LEFT}"), g, 0, &[Redraw]);
            check1(&format!("{g}{HOME}{RIGHT}"), g, chars, &[Redraw]);
        }
    }

    #[test]
    fn backspace_at_start_rings() {
        check1(BS, "", 0, &[Bell]);
        check1(&format!("ab{HOME}{BS}"), "ab", 0, &[Bell, Redraw]);
    }

    #[test]
    fn delete_removes_under_the_cursor() {
        check1(&format!("abc{LEFT}{LEFT}{DEL}"), "ac", 1, &[Redraw]);
        check1(&format!("abc{DEL}"), "abc", 3, &[Bell, Redraw]);
    }

    #[test]
    fn ctrl_u_deletes_to_the_start() {
        check1(&format!("hello world{LEFT}{LEFT}\x15"), "ld", 0, &[Redraw]);
        check1("hello\x15", "", 0, &[Redraw]);
        check1("\x15", "", 0, &[Bell]);
    }

    #[test]
    fn ctrl_k_deletes_to_the_end() {
        check1(&format!("hello{HOME}{RIGHT}\x0b"), "h", 1, &[Redraw]);
        check1("hello\x0b", "hello", 5, &[Bell, Redraw]);
    }

    #[test]
    fn ctrl_w_deletes_the_word_before_the_cursor() {
        check1("foo bar\x17", "foo ", 4, &[Redraw]);
        // Trailing spaces go with the word.
        check1("foo bar   \x17", "foo ", 4, &[Redraw]);
        check1("foo bar\x17\x17", "", 0, &[Redraw]);
        check1("   \x17", "", 0, &[Redraw]);
        // In the middle of the line.
        check1(
            &format!("foo bar baz{LEFT}{LEFT}{LEFT}{LEFT}\x17"),
            "foo  baz",
            4,
            &[Redraw],
        );
        // Half a word.
        check1(
            &format!("foo barbaz{LEFT}{LEFT}{LEFT}\x17"),
            "foo baz",
            4,
            &[Redraw],
        );
        check1("héllo wörld\x17", "héllo ", 6, &[Redraw]);
        // At the start.
        check1("\x17", "", 0, &[Bell]);
        check1(&format!("foo{HOME}\x17"), "foo", 0, &[Bell, Redraw]);
        // Alt-Backspace does the same.
        check1("foo bar\x1b\x7f", "foo ", 4, &[Redraw]);
    }

    // ---- moving ----

    #[test]
    fn arrows_move_by_one() {
        for (left, right) in [(LEFT, RIGHT), ("\x1bOD", "\x1bOC"), ("\x02", "\x06")] {
            check1(&format!("abc{left}"), "abc", 2, &[Redraw]);
            check1(&format!("abc{left}{left}{right}"), "abc", 2, &[Redraw]);
            check1(&format!("a😀b{left}{left}"), "a😀b", 1, &[Redraw]);
            check1(left, "", 0, &[Bell]);
            check1(&format!("abc{right}"), "abc", 3, &[Bell, Redraw]);
        }
    }

    #[test]
    fn home_and_end_in_every_encoding() {
        let homes = ["\x01", "\x1b[H", "\x1bOH", "\x1b[1~", "\x1b[7~"];
        let ends = ["\x05", "\x1b[F", "\x1bOF", "\x1b[4~", "\x1b[8~"];
        for home in homes {
            check1(&format!("héllo{home}"), "héllo", 0, &[Redraw]);
            check1(&format!("héllo{home}X"), "Xhéllo", 1, &[Redraw]);
            check1(home, "", 0, &[]);
        }
        for end in ends {
            check1(&format!("héllo{HOME}{end}"), "héllo", 5, &[Redraw]);
            check1(&format!("héllo{HOME}{end}X"), "hélloX", 6, &[Redraw]);
            check1(end, "", 0, &[]);
        }
    }

    // ---- history ----

    #[test]
    fn history_goes_up_and_down() {
        let ed = check(
            &["one\r", "two\r", UP, UP, UP, DOWN, DOWN, DOWN],
            "",
            0,
            &[
                submit("one"),
                Redraw,
                submit("two"),
                Redraw,
                Redraw,
                Redraw,
                Bell,
                Redraw,
                Redraw,
                Bell,
            ],
        );
        assert_eq!(ed.history, ["one", "two"]);
        check(
            &["one\r", "two\r", UP, UP],
            "one",
            3,
            &[submit("one"), Redraw, submit("two"), Redraw, Redraw, Redraw],
        );
        check(
            &["one\r", "two\r", "\x10\x10\x0e"],
            "two",
            3,
            &[submit("one"), Redraw, submit("two"), Redraw, Redraw],
        );
        check(
            &["one\r", "\x1bOA"],
            "one",
            3,
            &[submit("one"), Redraw, Redraw],
        );
        check1(UP, "", 0, &[Bell]);
        check1(DOWN, "", 0, &[Bell]);
    }

    #[test]
    fn history_restores_the_draft() {
        check1(
            &format!("one\rdra{UP}{DOWN}"),
            "dra",
            3,
            &[submit("one"), Redraw],
        );
        check1(
            &format!("one\rdra{LEFT}{UP}{UP}{DOWN}"),
            "dra",
            3,
            &[submit("one"), Bell, Redraw],
        );
        // An edited entry can be submitted; the history keeps the original.
        let ed = check1_ed(&format!("one\r{UP}{BS}ly\r"));
        assert_eq!(ed.history, ["one", "only"]);
    }

    fn check1_ed(input: &str) -> Editor {
        let mut ed = editor();
        ed.feed(input.as_bytes());
        ed
    }

    #[test]
    fn history_skips_blanks_and_duplicates() {
        let ed = check1_ed("a\ra\r\r   \rb\ra\ra\r");
        assert_eq!(ed.history, ["a", "b", "a"]);
    }

    #[test]
    fn history_is_bounded() {
        let mut ed = editor();
        for i in 0..(MAX_HISTORY + 50) {
            ed.feed(format!("line {i}\r").as_bytes());
        }
        assert_eq!(ed.history.len(), MAX_HISTORY);
        ed.feed(UP.repeat(MAX_HISTORY).as_bytes());
        assert_eq!(ed.line(), "line 50");
        assert_eq!(ed.feed(UP.as_bytes()), [Bell]);
    }

    // ---- submitting, interrupting, quitting ----

    #[test]
    fn enter_is_cr_lf_or_crlf_once() {
        for enter in ["\r", "\n", "\r\n"] {
            check1(&format!("hi{enter}"), "", 0, &[submit("hi"), Redraw]);
            check(&["hi", enter], "", 0, &[Redraw, submit("hi"), Redraw]);
            check1(
                &format!("a{enter}b{enter}"),
                "",
                0,
                &[submit("a"), submit("b"), Redraw],
            );
        }
        // CRLF split across reads is still one Enter.
        check(&["hi\r", "\n"], "", 0, &[submit("hi"), Redraw]);
        check(&["hi\r", "\nx"], "x", 1, &[submit("hi"), Redraw, Redraw]);
        // LF CR and CR CR are two; so is CR, something, LF.
        check1("\n\r", "", 0, &[submit(""), submit(""), Redraw]);
        check1("\r\r", "", 0, &[submit(""), submit(""), Redraw]);
        check1("\rx\n", "", 0, &[submit(""), submit("x"), Redraw]);
    }

    #[test]
    fn ctrl_c_clears_the_line() {
        check1("abc\x03", "", 0, &[Interrupt, Redraw]);
        check1("\x03", "", 0, &[Interrupt, Redraw]);
        // Browsing state is reset too.
        check1(
            &format!("one\rdraft{UP}\x03{DOWN}"),
            "",
            0,
            &[submit("one"), Interrupt, Bell, Redraw],
        );
    }

    #[test]
    fn ctrl_d_quits_only_on_an_empty_line() {
        check1("\x04", "", 0, &[Eof]);
        check1(&format!("abc{LEFT}{LEFT}\x04"), "ac", 1, &[Redraw]);
        check1("abc\x04", "abc", 3, &[Bell, Redraw]);
        check1("a\x7f\x04", "", 0, &[Eof, Redraw]);
    }

    #[test]
    fn ctrl_l_redraws() {
        check1("\x0c", "", 0, &[Redraw]);
    }

    // ---- escape sequences ----

    #[test]
    fn unknown_sequences_are_ignored_whole() {
        for seq in [
            "\x1b[1;5C",     // Ctrl-Right
            "\x1b[1;3D",     // Alt-Left
            "\x1b[?25h",     // private mode
            "\x1b[5~",       // PageUp
            "\x1b[2~",       // Insert
            "\x1b[15~",      // F5
            "\x1b[<0;12;4M", // SGR mouse
            "\x1b[Z",        // Shift-Tab
            "\x1b[ q",       // intermediate byte
            "\x1bOP",        // F1
            "\x1bO5C",       // old xterm Ctrl-Right
            "\x1bx",         // Alt-x
            "\x1b[z",        // any final byte
        ] {
            let input = format!("ab{seq}");
            check1(&input, "ab", 2, &[Redraw]);
        }
        // Alt + a non-ASCII character.
        check1("ab\x1bé", "ab", 2, &[Redraw]);
        check1("ab\x1b😀c", "abc", 3, &[Redraw]);
    }

    #[test]
    fn long_sequences_stay_bounded() {
        let mut ed = editor();
        ed.feed(b"ab\x1b[");
        for _ in 0..10_000 {
            ed.feed(b"1;");
            assert!(ed.pending_len() <= 2 + MAX_CSI_PARAMS);
        }
        // Ends like `ESC [ 201 ~` would, but overflowed: ignored.
        ed.feed(b"201~c");
        assert_eq!((ed.line(), ed.pending_len()), ("abc", 0));
        ed.feed(b"\x1bO");
        ed.feed("1".repeat(10_000).as_bytes());
        assert_eq!(ed.pending_len(), 2);
        ed.feed(b"Hd");
        assert_eq!((ed.line(), ed.cursor()), ("abcd", 4));
    }

    #[test]
    fn a_lone_escape_waits() {
        let mut ed = editor();
        assert_eq!(ed.feed(b"ab\x1b"), [Redraw]);
        assert_eq!((ed.line(), ed.pending_len()), ("ab", 1));
        assert_eq!(ed.feed(b""), []);
        assert_eq!(ed.feed(b"[D"), [Redraw]);
        assert_eq!((ed.line(), ed.cursor()), ("ab", 1));
        // ESC ESC [ A: the first ESC was alone, the rest is Up.
        check1("one\r\x1b\x1b[A", "one", 3, &[submit("one"), Redraw]);
        // ESC then a control character: the control character counts.
        check1("ab\x1b\x03", "", 0, &[Interrupt, Redraw]);
        check1("ab\x1b\r", "", 0, &[submit("ab"), Redraw]);
        // A sequence broken by a control character.
        check1("ab\x1b[1\x7f", "a", 1, &[Redraw]);
    }

    #[test]
    fn split_reads_decode_the_same() {
        let cases: [(&str, &str, usize, Vec<EditorEvent>); 9] = [
            ("é€😀日", "é€😀日", 4, vec![]),
            ("ab\x1b[Dc\x1b[D\x1b[D", "acb", 0, vec![]),
            ("ab\x1bOH\x1b[4~\x1b[1~x", "xab", 1, vec![]),
            ("e\u{301}x\x1b[D\x1b[D\x1b[3~", "x", 0, vec![]),
            (
                "one\r\ntwo\r\n\x1b[A\x1b[A",
                "one",
                3,
                vec![submit("one"), submit("two")],
            ),
            ("\x1b[1;5Ca\x1b[?25l", "a", 1, vec![]),
            ("ab\x1bxc\x1b\x7f", "", 0, vec![]),
            (
                "x\x1b[200~a\r\nb\x04\x1b[Dc\x1b[201~\x04",
                "bc",
                2,
                vec![submit("xa"), Bell],
            ),
            ("\x1b[200~\x1b[201~\x04", "", 0, vec![Eof]),
        ];
        for (input, line, cursor, events) in cases {
            check_splits(input.as_bytes(), line, cursor, &events);
        }
    }

    // ---- bracketed paste ----

    #[test]
    fn paste_inserts_literally() {
        check1(&format!("{PASTE}hello{END_PASTE}"), "hello", 5, &[Redraw]);
        check1(
            &format!("ab{LEFT}{PASTE}XY{END_PASTE}"),
            "aXYb",
            3,
            &[Redraw],
        );
        // Controls and escape sequences inside are dropped, not executed.
        // Ctrl-C ends the paste: what follows is typed.
        check1(
            &format!("{PASTE}a\x03b\x7fc{END_PASTE}"),
            "c",
            1,
            &[Interrupt, Redraw],
        );
        check1(
            &format!("{PASTE}\x04a\x7fb\x1b[D\x1bxc\x15\x17\x01{END_PASTE}"),
            "abc",
            3,
            &[Redraw],
        );
        // Tabs become spaces.
        check1(&format!("{PASTE}a\tb{END_PASTE}"), "a    b", 6, &[Redraw]);
        // After the paste, keys work again.
        check1(&format!("{PASTE}ab{END_PASTE}\x7f"), "a", 1, &[Redraw]);
        // An end marker without a start is ignored.
        check1(&format!("a{END_PASTE}"), "a", 1, &[Redraw]);
    }

    #[test]
    fn paste_submits_line_by_line() {
        check1(
            &format!("{PASTE}one\r\ntwo\nthree\rfour{END_PASTE}"),
            "four",
            4,
            &[submit("one"), submit("two"), submit("three"), Redraw],
        );
        check1(
            &format!("{PASTE}\n\n{END_PASTE}"),
            "",
            0,
            &[submit(""), submit(""), Redraw],
        );
    }

    #[test]
    fn paste_markers_split_anywhere() {
        check_splits(
            format!("a{PASTE}b\r\nc\x03{END_PASTE}d").as_bytes(),
            "d",
            1,
            &[submit("ab"), Interrupt],
        );
        check_splits(
            format!("{PASTE}é\t😀{END_PASTE}\x7f").as_bytes(),
            "é    ",
            5,
            &[],
        );
    }

    #[test]
    fn paste_past_the_limit_rings() {
        let mut ed = editor();
        let big = "x".repeat(MAX_LINE_BYTES + 10);
        let events = ed.feed(format!("{PASTE}{big}\r\nok{END_PASTE}").as_bytes());
        assert_eq!(events, [Bell, Submit("x".repeat(MAX_LINE_BYTES)), Redraw]);
        assert_eq!(ed.line(), "ok");
    }

    // ---- limits ----

    #[test]
    fn the_line_is_bounded() {
        let mut ed = editor();
        assert_eq!(
            ed.feed("a".repeat(MAX_LINE_BYTES + 1000).as_bytes()),
            [Bell, Redraw]
        );
        assert_eq!(ed.line().len(), MAX_LINE_BYTES);
        // Full: a multi-byte character does not fit either, Backspace does.
        ed.feed(b"\x7f");
        assert_eq!(ed.feed("é".as_bytes()), [Bell]);
        assert_eq!(ed.feed(b"b"), [Redraw]);
        assert_eq!(ed.line().len(), MAX_LINE_BYTES);
        // Wide characters: never more than the limit in bytes.
        let mut ed = editor();
        ed.feed("😀".repeat(MAX_LINE_BYTES).as_bytes());
        assert_eq!(ed.line().len(), MAX_LINE_BYTES);
        assert_eq!(ed.cursor(), MAX_LINE_BYTES / 4);
    }

    #[test]
    fn a_megabyte_of_typing_stays_bounded() {
        let mut ed = editor();
        let text = "lorem ipsum €😀 ".repeat(1 << 16);
        assert!(text.len() >= 1 << 20);
        for chunk in text.as_bytes().chunks(1000) {
            let events = ed.feed(chunk);
            assert!(events.len() <= 2);
            assert!(ed.line().len() <= MAX_LINE_BYTES && ed.pending_len() <= 4);
        }
        // With the cursor at the start, every insert would shift the line.
        let mut ed = editor();
        ed.feed(&text.as_bytes()[..MAX_LINE_BYTES - 10]);
        let attack = "\x01x\x1b[3~".repeat(1 << 16);
        ed.feed(attack.as_bytes());
        assert!(ed.line().len() <= MAX_LINE_BYTES);
    }

    #[test]
    fn a_megabyte_of_garbage_stays_bounded() {
        for seed in [1, 0x9e37_79b9_7f4a_7c15, 42] {
            let mut rng = XorShift(seed);
            let mut ed = editor();
            for _ in 0..256 {
                let len = (rng.next() % 8192) as usize;
                let events = ed.feed(&rng.bytes(len));
                assert!(ed.line().len() <= MAX_LINE_BYTES);
                assert!(ed.pending_len() <= 2 + MAX_CSI_PARAMS);
                assert!(ed.history.len() <= MAX_HISTORY);
                assert!(ed.line.is_char_boundary(ed.cursor) && ed.cursor <= ed.line.len());
                assert!(!ed.line.chars().any(char::is_control));
                for e in events {
                    if let Submit(line) = e {
                        assert!(line.len() <= MAX_LINE_BYTES);
                    }
                }
                // Rendering never panics either.
                ed.render_line();
            }
        }
        // Garbage biased towards the interesting bytes.
        let alphabet =
            b"\x1b[O~0123;ABCDHF\x7f\x08\x01\x05\x15\x17\r\n\x04\xc3\xa9\xf0\x9f\x98\x80 ab";
        let mut rng = XorShift(7);
        let mut ed = editor();
        for _ in 0..(1 << 20) / 4096 {
            let chunk: Vec<u8> = (0..4096)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            ed.feed(&chunk);
            assert!(ed.line().len() <= MAX_LINE_BYTES && ed.pending_len() <= 2 + MAX_CSI_PARAMS);
        }
    }

    // ---- rendering ----

    #[test]
    fn render_line_bytes() {
        let mut ed = editor();
        assert_eq!(ed.render_line(), b"\r\x1b[K> ");
        ed.feed(b"hello");
        assert_eq!(ed.render_line(), b"\r\x1b[K> hello");
        ed.feed(b"\x1b[D\x1b[D");
        assert_eq!(ed.render_line(), b"\r\x1b[K> hello\x1b[2D");
        ed.feed(b"\x01");
        assert_eq!(ed.render_line(), b"\r\x1b[K> hello\x1b[5D");
    }

    #[test]
    fn render_line_counts_wide_characters() {
        let mut ed = editor();
        ed.feed("a😀日e\u{301}b".as_bytes());
        ed.feed(b"\x01\x1b[C");
        // After `a`: 😀 (2) + 日 (2) + é (1) + b (1).
        assert_eq!(
            ed.render_line(),
            "\r\x1b[K> a😀日e\u{301}b\x1b[6D".as_bytes()
        );
        ed.feed(b"\x1b[C\x1b[C");
        assert_eq!(
            ed.render_line(),
            "\r\x1b[K> a😀日e\u{301}b\x1b[2D".as_bytes()
        );
    }

    #[test]
    fn render_line_scrolls_a_long_line() {
        // 10 columns: "> " and 7 for text, the last column kept free.
        let mut ed = Editor::new("> ", 10);
        ed.feed(b"abcdefghij");
        assert_eq!(ed.render_line(), b"\r\x1b[K> defghij");
        ed.feed(b"\x01");
        assert_eq!(ed.render_line(), b"\r\x1b[K> abcdefg\x1b[7D");
        ed.feed(b"\x1b[C\x1b[C");
        assert_eq!(ed.render_line(), b"\r\x1b[K> abcdefg\x1b[5D");
        // Wide characters are never cut in half.
        let mut ed = Editor::new("> ", 10);
        ed.feed("日本語の文字".as_bytes());
        assert_eq!(ed.render_line(), "\r\x1b[K> の文字".as_bytes());
        // Width changes apply; 0 means unknown: no scrolling.
        ed.set_width(0);
        assert_eq!(ed.render_line(), "\r\x1b[K> 日本語の文字".as_bytes());
        ed.set_width(80);
        assert_eq!(ed.render_line(), "\r\x1b[K> 日本語の文字".as_bytes());
        // A prompt wider than the terminal: no scrolling rather than nothing.
        ed.set_width(2);
        assert_eq!(ed.render_line(), "\r\x1b[K> 日本語の文字".as_bytes());
    }

    #[test]
    fn print_above_keeps_the_input() {
        let mut ed = editor();
        ed.feed(b"hi");
        assert_eq!(
            ed.print_above("<bob> hello"),
            b"\r\x1b[K<bob> hello\r\n\r\x1b[K> hi"
        );
        assert_eq!(
            ed.print_above("<bob> hello\n"),
            b"\r\x1b[K<bob> hello\r\n\r\x1b[K> hi"
        );
        ed.feed(b"\x1b[D");
        assert_eq!(
            ed.print_above("one\ntwo\x1b[2J\x07\tend\r\n\n"),
            b"\r\x1b[Kone\r\ntwo[2J\tend\r\n\r\n\r\x1b[K> hi\x1b[1D",
        );
        assert_eq!(ed.print_above(""), b"\r\x1b[K\r\n\r\x1b[K> hi\x1b[1D");
    }

    #[test]
    fn render_submitted_bytes() {
        let mut ed = editor();
        assert_eq!(ed.feed(b"hi\r"), [submit("hi"), Redraw]);
        assert_eq!(ed.render_submitted("hi"), b"\r\x1b[K> hi\r\n");
        assert_eq!(ed.render_submitted("a\x1b[2Jb"), b"\r\x1b[K> a[2Jb\r\n");
        assert_eq!(ed.render_line(), b"\r\x1b[K> ");
    }

    #[test]
    fn set_prompt_drops_controls() {
        let mut ed = editor();
        ed.feed(b"x\x1b[D");
        ed.set_prompt("\x1b[31mbob\x1b[0m> ");
        assert_eq!(ed.render_line(), b"\r\x1b[K[31mbob[0m> x\x1b[1D");
        ed.set_prompt("日> ");
        ed.set_width(6);
        ed.feed(b"\x05yz");
        // 6 columns: prompt 4, one for text, one free.
        assert_eq!(ed.render_line(), "\r\x1b[K日> z".as_bytes());
    }
}
