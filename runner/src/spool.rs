//! The log spool: every log write of a task attempt goes to an append-only file first, and a
//! shipper sends it to the controller in order, advancing only on acknowledgement. While the
//! controller is unreachable the file grows on disk, not in memory; when it comes back, shipping
//! resumes where the acknowledgements stopped. Sequence numbers are contiguous per attempt, so any
//! gap is visible on the controller.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Largest chunk sent as one record; bigger writes are split.
pub const CHUNK: usize = 64 * 1024;

/// One attempt's spool.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    writer: Mutex<(File, i64)>,
    written: AtomicU64,
    notify: Notify,
}

/// A record read back: (seq, stream, data).
pub type Record = (i64, String, Vec<u8>);

impl Spool {
    /// Creates (or truncates) the spool file in `dir`.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("log.spool");
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        Ok(Self {
            path,
            writer: Mutex::new((file, 0)),
            written: AtomicU64::new(0),
            notify: Notify::new(),
        })
    }

    /// Appends `data` on `stream` (split into chunks of at most [`CHUNK`] bytes).
    pub fn append(&self, stream: &str, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let stream = &stream.as_bytes()[..stream.len().min(255)];
        let mut w = self.writer.lock().expect("spool lock");
        let mut buf = Vec::with_capacity(data.len() + 32);
        for piece in data.chunks(CHUNK) {
            let seq = w.1;
            w.1 += 1;
            buf.extend_from_slice(&seq.to_le_bytes());
            buf.push(stream.len() as u8);
            buf.extend_from_slice(stream);
            buf.extend_from_slice(&(piece.len() as u32).to_le_bytes());
            buf.extend_from_slice(piece);
        }
        w.0.write_all(&buf)?;
        self.written.fetch_add(buf.len() as u64, Ordering::Release);
        drop(w);
        self.notify.notify_one();
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Resolves when something was appended since the last wake-up.
    pub async fn appended(&self) {
        self.notify.notified().await;
    }

    /// Reads whole records from `offset`, up to about `max_bytes` and `max_records`; returns them
    /// and the offset after the last one.
    pub fn read_from(
        &self,
        offset: u64,
        max_bytes: usize,
        max_records: usize,
    ) -> std::io::Result<(Vec<Record>, u64)> {
        let end = self.written();
        if offset >= end {
            return Ok((Vec::new(), offset));
        }
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        let want = ((end - offset) as usize).min(max_bytes + CHUNK + 300);
        let mut buf = vec![0u8; want];
        f.read_exact(&mut buf)?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        let mut size = 0usize;
        while out.len() < max_records && size < max_bytes {
            let Some(rec) = parse(&buf[pos..]) else { break };
            let (record, len) = rec;
            size += record.2.len();
            pos += len;
            out.push(record);
        }
        Ok((out, offset + pos as u64))
    }
}

fn parse(buf: &[u8]) -> Option<(Record, usize)> {
    let seq = i64::from_le_bytes(buf.get(0..8)?.try_into().ok()?);
    let slen = *buf.get(8)? as usize;
    let stream = String::from_utf8_lossy(buf.get(9..9 + slen)?).into_owned();
    let p = 9 + slen;
    let dlen = u32::from_le_bytes(buf.get(p..p + 4)?.try_into().ok()?) as usize;
    let data = buf.get(p + 4..p + 4 + dlen)?.to_vec();
    Some(((seq, stream, data), p + 4 + dlen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_in_batches() {
        let dir = std::env::temp_dir().join(format!("spool-test-{}", std::process::id()));
        let s = Spool::create(&dir).unwrap();
        for i in 0..1000 {
            s.append(
                if i % 2 == 0 { "stdout" } else { "stderr" },
                format!("line {i}\n").as_bytes(),
            )
            .unwrap();
        }
        s.append("stdout", &vec![b'x'; CHUNK * 2 + 10]).unwrap();
        let mut offset = 0;
        let mut all = Vec::new();
        loop {
            let (batch, next) = s.read_from(offset, 4096, 100).unwrap();
            if batch.is_empty() {
                break;
            }
            assert!(batch.len() <= 100);
            all.extend(batch);
            offset = next;
        }
        assert_eq!(offset, s.written());
        assert_eq!(all.len(), 1003, "the big write is three chunks");
        assert!(
            all.iter().enumerate().all(|(i, r)| r.0 == i as i64),
            "contiguous sequence numbers"
        );
        assert_eq!(all[7].1, "stderr");
        assert_eq!(all[7].2, b"line 7\n");
        assert_eq!(all[1002].2.len(), 10);
        let _ = std::fs::remove_dir_all(dir);
    }
}
