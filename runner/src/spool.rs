//! The log spool: every log write of a task attempt goes to an append-only file first, and a
//! shipper sends it to the controller in order, advancing only on acknowledgement. While the
//! controller is unreachable the file grows on disk, not in memory; when it comes back, shipping
//! resumes where the acknowledgements stopped. Sequence numbers are contiguous per attempt, so any
//! gap is visible on the controller.
//!
//! Every write is scrubbed of secrets on its way in ([`crate::redact`]), so nothing secret ever
//! reaches the disk or the controller, and the spool holds at most what the controller stores per
//! attempt: writes past [`MAX_BYTES`] are counted and dropped, and [`Spool::finish`] records how
//! many bytes were dropped in a last line, so the gap is visible to whoever reads the log.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::redact::Scrubber;

/// Largest chunk sent as one record; bigger writes are split.
pub const CHUNK: usize = 64 * 1024;

/// Most log bytes spooled per attempt: the controller's cap, less room for the closing note.
pub const MAX_BYTES: u64 = proto::limits::MAX_LOG_BYTES - CHUNK as u64;

/// One attempt's spool.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    writer: Mutex<Writer>,
    written: AtomicU64,
    notify: Notify,
}

#[derive(Debug)]
struct Writer {
    file: File,
    seq: i64,
    /// Log bytes taken (before framing).
    taken: u64,
    /// Log bytes dropped over the cap.
    dropped: u64,
    scrubber: Scrubber,
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
            writer: Mutex::new(Writer {
                file,
                seq: 0,
                taken: 0,
                dropped: 0,
                scrubber: Scrubber::default(),
            }),
            written: AtomicU64::new(0),
            notify: Notify::new(),
        })
    }

    /// Appends `data` on `stream` (scrubbed, split into chunks of at most [`CHUNK`] bytes,
    /// dropped and counted past [`MAX_BYTES`]).
    pub fn append(&self, stream: &str, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let stream = String::from_utf8_lossy(&stream.as_bytes()[..stream.len().min(255)]);
        let mut w = self.writer.lock().expect("spool lock");
        if w.taken >= MAX_BYTES {
            w.dropped += data.len() as u64;
            return Ok(());
        }
        let clean = w.scrubber.scrub(&stream, data);
        let room = MAX_BYTES.saturating_sub(w.taken) as usize;
        let keep = clean.len().min(room);
        w.dropped += (clean.len() - keep) as u64;
        self.write_records(&mut w, &stream, &clean[..keep])
    }

    /// Ends the attempt's log: releases what the scrubber held back and notes the bytes dropped
    /// over the cap.
    pub fn finish(&self) -> std::io::Result<()> {
        let mut w = self.writer.lock().expect("spool lock");
        for (stream, rest) in w.scrubber.flush() {
            let room = MAX_BYTES.saturating_sub(w.taken) as usize;
            let keep = rest.len().min(room);
            w.dropped += (rest.len() - keep) as u64;
            self.write_records(&mut w, &stream, &rest[..keep])?;
        }
        if w.dropped > 0 {
            let note = format!(
                "[runner: {} bytes of log dropped over the {} MiB limit of an attempt]\n",
                w.dropped,
                proto::limits::MAX_LOG_BYTES >> 20
            );
            self.write_records(&mut w, "runner", note.as_bytes())?;
        }
        Ok(())
    }

    /// Bytes dropped over the cap so far.
    pub fn dropped(&self) -> u64 {
        self.writer.lock().expect("spool lock").dropped
    }

    fn write_records(&self, w: &mut Writer, stream: &str, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let stream = &stream.as_bytes()[..stream.len().min(255)];
        let mut buf = Vec::with_capacity(data.len() + 32);
        for piece in data.chunks(CHUNK) {
            let seq = w.seq;
            w.seq += 1;
            buf.extend_from_slice(&seq.to_le_bytes());
            buf.push(stream.len() as u8);
            buf.extend_from_slice(stream);
            buf.extend_from_slice(&(piece.len() as u32).to_le_bytes());
            buf.extend_from_slice(piece);
        }
        w.file.write_all(&buf)?;
        w.taken += data.len() as u64;
        self.written.fetch_add(buf.len() as u64, Ordering::Release);
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
        let mut big = vec![b'x'; CHUNK * 2 + 9];
        big.push(b'\n');
        s.append("stdout", &big).unwrap();
        s.finish().unwrap();
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

    #[test]
    fn the_spool_stops_at_the_controllers_cap_and_says_how_much_it_dropped() {
        let dir = std::env::temp_dir().join(format!("spool-cap-{}", std::process::id()));
        let s = Spool::create(&dir).unwrap();
        let mb = vec![b'y'; 1 << 20];
        for _ in 0..70 {
            s.append("agent", &mb).unwrap();
        }
        s.finish().unwrap();
        let on_disk = std::fs::metadata(dir.join("log.spool")).unwrap().len();
        assert!(
            on_disk < proto::limits::MAX_LOG_BYTES + (1 << 20),
            "{on_disk}"
        );
        assert_eq!(s.dropped(), 70 * (1 << 20) - MAX_BYTES);
        let mut offset = 0;
        let mut last = None;
        loop {
            let (batch, next) = s.read_from(offset, 1 << 22, 10_000).unwrap();
            if batch.is_empty() {
                break;
            }
            last = batch.last().cloned();
            offset = next;
        }
        let (_, stream, note) = last.unwrap();
        assert_eq!(stream, "runner");
        let note = String::from_utf8(note).unwrap();
        assert!(
            note.contains(&format!("{} bytes of log dropped", s.dropped())),
            "{note}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
