//! The consumer's resume point, kept in a small text file written atomically.
//!
//! ```text
//! ringcache-bus-state 1
//! stream <name>
//! epoch <token>          the stream's epoch key when the id was applied
//! last_id <ms>-<seq>     the last entry applied (or skipped as our own)
//! offset <n>             entries-added count at last_id (its position)
//! ```
//!
//! Written to `<file>.tmp`, fsynced, renamed over `<file>`, and the directory
//! fsynced, before any acknowledgement is sent: after a crash the file holds
//! either the old or the new point, never a torn one. A file that does not
//! parse is not trusted (the caller treats it like a gap and drops the cache).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::entry_id::EntryId;

/// Largest state file read, in bytes.
pub const STATE_FILE_BYTES_MAX: u64 = 4096;
const MAGIC: &str = "ringcache-bus-state 1";

/// Where the consumer stands in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The epoch token of the stream this position belongs to.
    pub epoch: String,
    pub last_id: EntryId,
    /// The stream's `entries-added` count when `last_id` was added.
    pub offset: u64,
}

/// What the state file said.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// No file: this node never consumed this stream.
    Missing,
    Found(Position),
    /// A file that does not parse, or names another stream.
    Damaged(String),
}

/// The state file of one stream.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    stream: String,
}

impl StateFile {
    pub fn new(path: PathBuf, stream: &str) -> StateFile {
        StateFile {
            path,
            stream: stream.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Loaded {
        let text = match File::open(&self.path).and_then(|f| {
            let mut s = String::new();
            io::Read::read_to_string(&mut io::Read::take(f, STATE_FILE_BYTES_MAX), &mut s)?;
            Ok(s)
        }) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
            Err(e) => return Loaded::Damaged(format!("{}: {e}", self.path.display())),
        };
        match self.parse(&text) {
            Some(p) => Loaded::Found(p),
            None => Loaded::Damaged(format!("{}: not a bus state file", self.path.display())),
        }
    }

    fn parse(&self, text: &str) -> Option<Position> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut field = |key: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key))
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
        };
        let stream = field("stream")?;
        let epoch = field("epoch")?;
        let last_id = EntryId::parse(&field("last_id")?)?;
        let offset = field("offset")?.parse().ok()?;
        if stream != self.stream || epoch.is_empty() || lines.next().is_some() {
            return None;
        }
        Some(Position {
            epoch,
            last_id,
            offset,
        })
    }

    /// Replace the file with `pos`, durably (see the module doc).
    pub fn save(&self, pos: &Position) -> io::Result<()> {
        let text = format!(
            "{MAGIC}\nstream {}\nepoch {}\nlast_id {}\noffset {}\n",
            self.stream, pos.epoch, pos.last_id, pos.offset
        );
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_distrusts() {
        let dir = std::env::temp_dir().join(format!("ringcache-bus-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = StateFile::new(dir.join("s.state"), "inv");
        assert_eq!(file.load(), Loaded::Missing);
        let pos = Position {
            epoch: "e1".into(),
            last_id: EntryId { ms: 17, seq: 2 },
            offset: 9,
        };
        file.save(&pos).unwrap();
        assert_eq!(file.load(), Loaded::Found(pos.clone()));
        assert!(!dir.join("s.tmp").exists());
        // Another stream's file is not ours.
        let other = StateFile::new(dir.join("s.state"), "other");
        assert!(matches!(other.load(), Loaded::Damaged(_)));
        for bad in [
            "",
            "ringcache-bus-state 2\n",
            "ringcache-bus-state 1\nstream inv\nepoch e\nlast_id x\noffset 1\n",
            "ringcache-bus-state 1\nstream inv\nepoch e\nlast_id 1-0\n",
            "ringcache-bus-state 1\nstream inv\nepoch e\nlast_id 1-0\noffset 1\nmore\n",
        ] {
            fs::write(dir.join("s.state"), bad).unwrap();
            assert!(matches!(file.load(), Loaded::Damaged(_)), "{bad:?}");
        }
        fs::remove_dir_all(dir).ok();
    }
}
