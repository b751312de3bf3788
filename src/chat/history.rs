//! Conversation history on disk: one JSON file per conversation in the
//! platform data folder, each written atomically (a temporary file in the
//! same folder, flushed to disk, renamed over the old one, the folder
//! flushed). A crash or kill at any moment leaves either the old file or the
//! new one, never a mixture; a leftover temporary file is ignored and
//! cleaned up. A file that cannot be read back is reported and skipped —
//! never fatal, never overwritten — so nothing saved before is lost.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::vision::tasks::{Family, Task};

use crate::protocol::ReplyStats;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot save the conversation to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the history folder {path}: {source}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One message as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `user` or `assistant`.
    pub role: String,
    pub text: String,
    /// Speed of an assistant reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ReplyStats>,
    /// The reply was stopped or failed before its end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// Images sent with a user message (copies in the data folder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Attachment>,
    /// The RoboBrain task a user message was sent in.
    #[serde(default, skip_serializing_if = "is_general")]
    pub task: Task,
    /// The RoboBrain generation the task was worded for.
    #[serde(default, skip_serializing_if = "is_robobrain2")]
    pub family: Family,
    /// A progress estimate's reply: each frame's progress (the first
    /// frame's is 0; `None` where the answer held no score).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<Option<f32>>,
}

fn is_robobrain2(f: &Family) -> bool {
    *f == Family::RoboBrain2
}

fn is_general(t: &Task) -> bool {
    *t == Task::General
}

/// An image attached to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The copy Spillway keeps (the original may move or be a paste).
    pub path: PathBuf,
    /// The original size in pixels.
    pub width: u32,
    pub height: u32,
}

impl ChatMessage {
    /// The message as the chat template sees it: the task's wording, and
    /// images as content parts before the text.
    pub fn template_message(&self) -> crate::chat::Message {
        let text = if self.role == "user" {
            self.task.prompt_for(self.family, &self.text)
        } else {
            self.text.clone()
        };
        // A progress estimate's frames were asked about one by one; later
        // turns see its task and its answers, not every frame again.
        if self.images.is_empty() || self.task == Task::Progress {
            return crate::chat::Message::new(&self.role, &text);
        }
        let mut parts: Vec<serde_json::Value> = self
            .images
            .iter()
            .map(|a| serde_json::json!({"type": "image", "path": a.path}))
            .collect();
        parts.push(serde_json::json!({"type": "text", "text": text}));
        crate::chat::Message {
            role: self.role.clone(),
            content: serde_json::Value::Array(parts),
        }
    }

    pub fn user(text: &str) -> Self {
        ChatMessage {
            role: "user".into(),
            text: text.into(),
            stats: None,
            incomplete: false,
            images: Vec::new(),
            task: Task::General,
            family: Family::RoboBrain2,
            progress: Vec::new(),
        }
    }

    pub fn assistant(text: &str) -> Self {
        ChatMessage {
            role: "assistant".into(),
            ..Self::user(text)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// The file name stem; unique, never reused.
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub system_prompt: String,
    pub messages: Vec<ChatMessage>,
    /// Seconds since the Unix epoch.
    pub created_secs: u64,
    pub updated_secs: u64,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Conversation {
    /// A new, empty conversation with an id no other will have.
    pub fn new(system_prompt: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let now = now_secs();
        Conversation {
            id: format!("c{nanos:x}-{:x}", std::process::id()),
            title: "New conversation".into(),
            system_prompt: system_prompt.into(),
            messages: Vec::new(),
            created_secs: now,
            updated_secs: now,
        }
    }

    /// The conversation as chat-template messages (system prompt first).
    pub fn template_messages(&self) -> Vec<crate::chat::Message> {
        let system = (!self.system_prompt.trim().is_empty())
            .then(|| crate::chat::Message::new("system", &self.system_prompt));
        system
            .into_iter()
            .chain(self.messages.iter().map(ChatMessage::template_message))
            .collect()
    }

    /// A title from the first user message, when none was given.
    pub fn title_from_first_message(&mut self) {
        if self.title != "New conversation" {
            return;
        }
        if let Some(m) = self.messages.iter().find(|m| m.role == "user") {
            let line = m.text.lines().next().unwrap_or("").trim();
            let mut t: String = line.chars().take(48).collect();
            if line.chars().count() > 48 {
                t.push('…');
            }
            if !t.is_empty() {
                self.title = t;
            }
        }
    }
}

/// A file that could not be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    pub path: PathBuf,
    pub reason: String,
}

/// The history folder.
#[derive(Debug, Clone)]
pub struct History {
    dir: PathBuf,
}

const EXT: &str = "json";
const TMP_MARK: &str = ".tmp-";

impl History {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, HistoryError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| HistoryError::Folder {
            path: dir.clone(),
            source,
        })?;
        Ok(History { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &str) -> Result<PathBuf, HistoryError> {
        if !valid_id(id) {
            return Err(HistoryError::Write {
                path: self.dir.join(id),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a conversation id is letters, digits, '-' and '_' only",
                ),
            });
        }
        Ok(self.dir.join(format!("{id}.{EXT}")))
    }

    /// Every readable conversation, newest first, and the files that could
    /// not be read. Leftover temporary files of an interrupted save are
    /// removed (the file they were replacing is intact).
    pub fn load_all(&self) -> (Vec<Conversation>, Vec<Damaged>) {
        let mut convs = Vec::new();
        let mut damaged = Vec::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return (convs, damaged);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((_, pid)) = name.rsplit_once(TMP_MARK) {
                // Another window's save in progress is not ours to remove.
                if !pid
                    .parse::<u32>()
                    .is_ok_and(crate::telemetry::process_alive)
                {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some(EXT) {
                continue;
            }
            // The conversation's id is its file's name, never what the file
            // says inside (a hand-edited "../../x" would save and delete
            // outside the folder).
            let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| valid_id(s))
                .map(str::to_string)
            else {
                continue;
            };
            let parsed = read_at_most(&path, MAX_HISTORY_FILE_BYTES)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<Conversation>(&b).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(mut c) => {
                    c.id = id;
                    convs.push(c)
                }
                Err(reason) => damaged.push(Damaged { path, reason }),
            }
        }
        convs.sort_by(|a, b| b.updated_secs.cmp(&a.updated_secs).then(b.id.cmp(&a.id)));
        (convs, damaged)
    }

    /// Saves `conv` atomically.
    pub fn save(&self, conv: &Conversation) -> Result<(), HistoryError> {
        self.save_with(conv, &mut || Ok(()))
    }

    /// [`History::save`] with a hook run between writing the temporary file
    /// and renaming it (tests simulate a crash there).
    pub fn save_with(
        &self,
        conv: &Conversation,
        before_rename: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> Result<(), HistoryError> {
        let path = self.path_of(&conv.id)?;
        let err = |source| HistoryError::Write {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(conv)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        write_atomic(&path, &bytes, before_rename).map_err(err)
    }

    /// Deletes a conversation's file (a missing one is not an error).
    pub fn delete(&self, id: &str) -> Result<(), HistoryError> {
        let path = self.path_of(id)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(HistoryError::Write { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// Whether `id` can name a conversation's file: 1 to 128 ASCII letters,
/// digits, '-' or '_' (no separators, no dots).
fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A history file is text a person typed and a model wrote; one larger
/// than this is not read into memory.
const MAX_HISTORY_FILE_BYTES: u64 = 256 << 20;

/// The bytes of `path`, read only up to `limit`: a larger (or endless)
/// file is an error of kind `FileTooLarge`, never read into memory.
pub fn read_at_most(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("the file is larger than {} MiB", limit >> 20),
        ));
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` so that a crash leaves either the old content
/// or the new, whole.
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    before_rename: &mut dyn FnMut() -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!("{name}{TMP_MARK}{}", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        before_rename()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself reaches the disk with the folder.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(text: &str) -> Conversation {
        let mut c = Conversation::new("Be brief.");
        c.messages.push(ChatMessage::user(text));
        c.title_from_first_message();
        c
    }

    #[test]
    fn saves_loads_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let mut a = conv("What is a tier?");
        a.updated_secs = 10;
        let mut b = conv("Second");
        b.updated_secs = 20;
        h.save(&a).unwrap();
        h.save(&b).unwrap();
        let (all, damaged) = h.load_all();
        assert!(damaged.is_empty());
        assert_eq!(all, vec![b.clone(), a.clone()]);
        assert_eq!(all[1].title, "What is a tier?");
        h.delete(&b.id).unwrap();
        h.delete(&b.id).unwrap();
        assert_eq!(h.load_all().0, vec![a]);
    }

    /// A crash between writing the new file and renaming it: the saved
    /// conversation is intact, the half-done save leaves nothing behind.
    #[test]
    fn crash_before_rename_loses_nothing_saved() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let saved = conv("Keep me");
        h.save(&saved).unwrap();
        let mut changed = saved.clone();
        changed.messages.push(ChatMessage::assistant("half"));
        let r = h.save_with(&changed, &mut || Err(std::io::Error::other("killed")));
        assert!(r.is_err());
        assert_eq!(h.load_all().0, vec![saved.clone()]);
        // A process killed at that point leaves its temporary file: it is
        // ignored and removed at the next start.
        let tmp = dir.path().join(format!("{}.json.tmp-99999", saved.id));
        fs::write(&tmp, b"{\"id\": \"trunc").unwrap();
        let (all, damaged) = h.load_all();
        assert_eq!(all, vec![saved]);
        assert!(damaged.is_empty());
        assert!(!tmp.exists());
    }

    #[test]
    fn a_damaged_file_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let good = conv("fine");
        h.save(&good).unwrap();
        let bad = dir.path().join("cbroken.json");
        fs::write(&bad, b"{\"id\": \"cbroken\", \"title\": \"x\", \"messa").unwrap();
        fs::write(dir.path().join("notes.txt"), b"not a conversation").unwrap();
        let (all, damaged) = h.load_all();
        assert_eq!(all, vec![good]);
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].path, bad);
        // Still there for the user to look at: never overwritten.
        assert!(bad.exists());
    }

    /// A hand-edited id cannot reach outside the folder: the id is the
    /// file's name, and saving or deleting a bad id is refused.
    #[test]
    fn an_id_from_inside_a_file_never_names_a_path() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("history");
        let h = History::open(&dir).unwrap();
        let mut c = conv("hi");
        c.id = "../../escaped".into();
        fs::write(dir.join("c1.json"), serde_json::to_vec(&c).unwrap()).unwrap();
        let (convs, damaged) = h.load_all();
        assert!(damaged.is_empty());
        assert_eq!(convs[0].id, "c1");
        h.save(&convs[0]).unwrap();
        h.delete(&convs[0].id).unwrap();
        assert!(!dir.join("c1.json").exists());
        assert!(h.save(&c).is_err());
        assert!(h.delete("../history").is_err());
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("history")]);
    }

    /// Another window's save in progress (a live process's temporary file)
    /// is left alone; a dead process's is cleaned.
    #[test]
    fn another_windows_save_in_progress_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).unwrap();
        let live = dir.path().join("c1.json.tmp-1");
        let dead = dir.path().join(format!("c2.json.tmp-{}", u32::MAX - 7));
        fs::write(&live, b"{").unwrap();
        fs::write(&dead, b"{").unwrap();
        h.load_all();
        assert!(live.exists(), "pid 1's save was removed");
        assert!(!dead.exists());
    }
}
