//! The records Kafka's group coordinator writes to `__consumer_offsets`, as far as a
//! watcher of commits needs them: offset commits, with their commit time.
//!
//! Layouts (Kafka's `OffsetCommitKey.json`, `LegacyOffsetCommitKey.json`,
//! `OffsetCommitValue.json` and `LegacyOffsetCommitValue.json`, group-coordinator
//! module). Every field is big-endian; a `string` is an int16 length then UTF-8 bytes,
//! a compact string an unsigned varint of length + 1 then the bytes.
//!
//! - The key starts with an int16 version, which is also the record's type: 0 and 1
//!   are offset commits (group: string, topic: string, partition: int32); 2 is group
//!   metadata; 3 and above are the records of newer group protocols (KIP-848 consumer
//!   groups, share and streams groups). Only 0 and 1 are read.
//! - The value starts with an int16 version:
//!   - v0: offset int64, metadata string, commit timestamp int64;
//!   - v1: offset, metadata, commit timestamp, expire timestamp int64;
//!   - v2: offset, metadata, commit timestamp;
//!   - v3: offset, leader epoch int32, metadata, commit timestamp;
//!   - v4 and above (flexible): as v3 with the metadata a compact string, then tagged
//!     fields, which are not read (Kafka adds only tagged fields after v4).
//! - A null value (a tombstone) deletes the commit: the group or the offset was
//!   deleted, or the offset expired.
//!
//! Parsing never panics and never allocates by a length read off the wire: every
//! length is checked against the bytes there.

use crate::{Error, Result};

/// One record of `__consumer_offsets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetsTopicRecord {
    /// A group's committed offset for a partition (key version 0 or 1).
    Commit {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The commit; `None` for a tombstone (the commit was deleted).
        commit: Option<OffsetCommit>,
    },
    /// Any other record: group metadata (key version 2) and the records of newer group
    /// protocols (3 and above).
    Other {
        /// The key's version (the record type).
        key_version: i16,
    },
}

/// The value of an offset commit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetCommit {
    /// The committed offset.
    pub offset: i64,
    /// The leader epoch of the last record consumed (value v3+), if the client gave one.
    pub leader_epoch: Option<i32>,
    /// When the coordinator wrote the commit, in ms since the epoch.
    pub commit_timestamp_ms: i64,
    /// When the commit expires (value v1 only), in ms since the epoch.
    pub expire_timestamp_ms: Option<i64>,
}

impl OffsetsTopicRecord {
    /// Reads one record from its key and value (`None`: null). A null key, a key or
    /// value cut short, a negative version or a string that is not UTF-8 is an error
    /// ([`Error::OffsetsTopicRecord`]); bytes after the fields read are ignored.
    pub fn parse(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<OffsetsTopicRecord> {
        let key = key.ok_or_else(|| bad("the key is null".to_owned()))?;
        let mut k = Reader::new(key, "key");
        let key_version = k.i16()?;
        match key_version {
            0 | 1 => {}
            v if v < 0 => return Err(bad(format!("key version {v} is negative"))),
            v => return Ok(OffsetsTopicRecord::Other { key_version: v }),
        }
        let group = k.string()?;
        let topic = k.string()?;
        let partition = k.i32()?;
        let commit = value.map(parse_value).transpose()?;
        Ok(OffsetsTopicRecord::Commit {
            group,
            topic,
            partition,
            commit,
        })
    }
}

fn parse_value(value: &[u8]) -> Result<OffsetCommit> {
    let mut v = Reader::new(value, "value");
    let version = v.i16()?;
    if version < 0 {
        return Err(bad(format!("value version {version} is negative")));
    }
    let offset = v.i64()?;
    let leader_epoch = if version >= 3 {
        Some(v.i32()?).filter(|e| *e >= 0)
    } else {
        None
    };
    if version >= 4 {
        v.skip_compact_string()?;
    } else {
        v.skip_string()?;
    }
    let commit_timestamp_ms = v.i64()?;
    let expire_timestamp_ms = if version == 1 { Some(v.i64()?) } else { None };
    Ok(OffsetCommit {
        offset,
        leader_epoch,
        commit_timestamp_ms,
        expire_timestamp_ms,
    })
}

fn bad(reason: String) -> Error {
    Error::OffsetsTopicRecord { reason }
}

/// Big-endian fields off a slice, failing rather than running past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, at: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                bad(format!(
                    "the {} ends at byte {} inside a field of {n} bytes at byte {}",
                    self.what,
                    self.bytes.len(),
                    self.at
                ))
            })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// An unsigned varint of at most 5 bytes.
    fn uvarint(&mut self) -> Result<u32> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let [byte] = self.array::<1>()?;
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad(format!(
            "the {} has a varint longer than 5 bytes",
            self.what
        )))
    }

    /// The bytes of an int16-length string; `None` for null (-1).
    fn string_bytes(&mut self) -> Result<Option<&'a [u8]>> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        self.take(usize::try_from(len).unwrap_or(0)).map(Some)
    }

    /// A non-null int16-length UTF-8 string.
    fn string(&mut self) -> Result<String> {
        let at = self.at;
        let bytes = self
            .string_bytes()?
            .ok_or_else(|| bad(format!("the {} has a null string at byte {at}", self.what)))?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| {
            bad(format!(
                "the {} has a string that is not UTF-8 at byte {at}",
                self.what
            ))
        })
    }

    fn skip_string(&mut self) -> Result<()> {
        self.string_bytes().map(drop)
    }

    fn skip_compact_string(&mut self) -> Result<()> {
        let len = self.uvarint()?;
        // 0 is null; otherwise the length is one less.
        if len > 0 {
            self.take(usize::try_from(len - 1).unwrap_or(usize::MAX))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as i16).to_be_bytes());
        out.extend(s.as_bytes());
    }

    fn key(version: i16, group: &str, topic: &str, partition: i32) -> Vec<u8> {
        let mut k = version.to_be_bytes().to_vec();
        string(&mut k, group);
        string(&mut k, topic);
        k.extend(partition.to_be_bytes());
        k
    }

    /// A value of `version` with offset 42, metadata "m", commit time 1_700_000_000_123,
    /// leader epoch 7 (v3+) and expire time 1_800_000_000_000 (v1).
    fn value(version: i16) -> Vec<u8> {
        let mut v = version.to_be_bytes().to_vec();
        v.extend(42i64.to_be_bytes());
        if version >= 3 {
            v.extend(7i32.to_be_bytes());
        }
        if version >= 4 {
            v.push(2); // compact: length + 1
            v.push(b'm');
        } else {
            string(&mut v, "m");
        }
        v.extend(1_700_000_000_123i64.to_be_bytes());
        if version == 1 {
            v.extend(1_800_000_000_000i64.to_be_bytes());
        }
        if version >= 4 {
            v.push(0); // no tagged fields
        }
        v
    }

    fn commit(record: OffsetsTopicRecord) -> Option<OffsetCommit> {
        match record {
            OffsetsTopicRecord::Commit {
                group,
                topic,
                partition,
                commit,
            } => {
                assert_eq!((group.as_str(), topic.as_str(), partition), ("g", "t", 3));
                commit
            }
            other => panic!("not a commit: {other:?}"),
        }
    }

    #[test]
    fn every_key_and_value_version_of_an_offset_commit() {
        for key_version in [0, 1] {
            for version in 0..=5 {
                let k = key(key_version, "g", "t", 3);
                let v = value(version);
                let c = commit(OffsetsTopicRecord::parse(Some(&k), Some(&v)).unwrap()).unwrap();
                assert_eq!(c.offset, 42, "v{version}");
                assert_eq!(c.commit_timestamp_ms, 1_700_000_000_123, "v{version}");
                assert_eq!(c.leader_epoch, (version >= 3).then_some(7), "v{version}");
                assert_eq!(
                    c.expire_timestamp_ms,
                    (version == 1).then_some(1_800_000_000_000),
                    "v{version}"
                );
            }
        }
        // A v4 value with null metadata, a leader epoch of -1 and tagged fields after.
        let mut v = 4i16.to_be_bytes().to_vec();
        v.extend(9i64.to_be_bytes());
        v.extend((-1i32).to_be_bytes());
        v.push(0);
        v.extend(5i64.to_be_bytes());
        v.extend([1, 0, 2, 0xaa, 0xbb]);
        let c = commit(OffsetsTopicRecord::parse(Some(&key(1, "g", "t", 3)), Some(&v)).unwrap())
            .unwrap();
        assert_eq!(
            (c.offset, c.leader_epoch, c.commit_timestamp_ms),
            (9, None, 5)
        );
    }

    #[test]
    fn a_tombstone_deletes_and_other_records_are_passed_over() {
        let k = key(1, "g", "t", 3);
        assert_eq!(
            commit(OffsetsTopicRecord::parse(Some(&k), None).unwrap()),
            None
        );
        // Group metadata: its layout is not read at all.
        let mut group = 2i16.to_be_bytes().to_vec();
        string(&mut group, "g");
        assert_eq!(
            OffsetsTopicRecord::parse(Some(&group), Some(&[0, 3, 0xff])).unwrap(),
            OffsetsTopicRecord::Other { key_version: 2 }
        );
        assert_eq!(
            OffsetsTopicRecord::parse(Some(&11i16.to_be_bytes()), None).unwrap(),
            OffsetsTopicRecord::Other { key_version: 11 }
        );
    }

    #[test]
    fn damage_is_an_error_that_says_where() {
        let k = key(0, "g", "t", 3);
        let v = value(3);
        let err = |k: Option<&[u8]>, v: Option<&[u8]>| {
            OffsetsTopicRecord::parse(k, v).unwrap_err().to_string()
        };
        assert!(err(None, Some(&v)).contains("the key is null"));
        assert!(err(Some(&k[..k.len() - 1]), Some(&v)).contains("the key ends"));
        assert!(err(Some(&k), Some(&v[..v.len() - 1])).contains("the value ends"));
        assert!(err(Some(&(-1i16).to_be_bytes()), None).contains("negative"));
        assert!(err(Some(&k), Some(&(-3i16).to_be_bytes())).contains("negative"));
        let mut not_utf8 = key(0, "g", "t", 3);
        not_utf8[4] = 0xff;
        assert!(err(Some(&not_utf8), None).contains("not UTF-8"));
        let mut null_group = 0i16.to_be_bytes().to_vec();
        null_group.extend((-1i16).to_be_bytes());
        assert!(err(Some(&null_group), None).contains("null string"));
        let mut long_varint = 4i16.to_be_bytes().to_vec();
        long_varint.extend(1i64.to_be_bytes());
        long_varint.extend(0i32.to_be_bytes());
        long_varint.extend([0xff; 6]);
        assert!(err(Some(&k), Some(&long_varint)).contains("varint"));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let good_key = key(1, "group", "topic", 3);
        for _ in 0..20_000 {
            let version = rng.random_range(0..6);
            let mut k = good_key.clone();
            let mut v = value(version);
            for _ in 0..rng.random_range(0..4) {
                let i = rng.random_range(0..k.len());
                k[i] = rng.random();
                let j = rng.random_range(0..v.len());
                v[j] = rng.random();
            }
            let kc = rng.random_range(0..=k.len());
            let vc = rng.random_range(0..=v.len());
            let _ = OffsetsTopicRecord::parse(Some(&k[..kc]), Some(&v[..vc]));
            let junk: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
            let _ = OffsetsTopicRecord::parse(Some(&junk), Some(&junk));
        }
    }
}
