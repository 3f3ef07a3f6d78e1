//! A compact byte encoding for state the agent stores often (each partition's
//! lag health): LEB128 varints, zigzag for signed values, so that the small
//! differences between neighbouring offsets and times take a byte or two.
//!
//! Reading is bounded by the input: a varint of more than 10 bytes, or input
//! that ends early, reads as `None`, never as a panic or a large allocation.

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded, so that small negative values stay short.
pub(crate) fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends the 8 bytes of `v`, exactly.
pub(crate) fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Reads an unsigned varint from the front of `input`.
pub(crate) fn get_u64(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        let bits = u64::from(byte & 0x7f);
        if i == 9 && bits > 1 {
            return None;
        }
        v |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Reads a zigzag-encoded signed varint.
pub(crate) fn get_i64(input: &mut &[u8]) -> Option<i64> {
    let raw = get_u64(input)?;
    Some((raw >> 1) as i64 ^ -((raw & 1) as i64))
}

/// Reads 8 bytes as an `f64`.
pub(crate) fn get_f64(input: &mut &[u8]) -> Option<f64> {
    let (bytes, rest) = input.split_first_chunk::<8>()?;
    *input = rest;
    Some(f64::from_le_bytes(*bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written_including_the_extremes() {
        let signed = [0, 1, -1, 63, -64, 64, 1 << 40, i64::MAX, i64::MIN];
        let unsigned = [0, 127, 128, 300, u64::MAX];
        let mut out = Vec::new();
        for v in signed {
            put_i64(&mut out, v);
        }
        for v in unsigned {
            put_u64(&mut out, v);
        }
        put_f64(&mut out, 279.31);
        let mut input = out.as_slice();
        for v in signed {
            assert_eq!(get_i64(&mut input), Some(v));
        }
        for v in unsigned {
            assert_eq!(get_u64(&mut input), Some(v));
        }
        assert_eq!(get_f64(&mut input), Some(279.31));
        assert!(input.is_empty());
    }

    #[test]
    fn small_differences_take_one_byte() {
        let mut out = Vec::new();
        put_i64(&mut out, -25);
        put_u64(&mut out, 100);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn short_or_overlong_input_reads_as_none() {
        assert_eq!(get_u64(&mut &[0x80u8, 0x80][..]), None);
        assert_eq!(get_u64(&mut &[0xffu8; 11][..]), None);
        // Ten bytes whose last carries more than the 64th bit.
        let mut too_big = vec![0xffu8; 9];
        too_big.push(0x02);
        assert_eq!(get_u64(&mut too_big.as_slice()), None);
        assert_eq!(get_f64(&mut &[1u8, 2, 3][..]), None);
        assert_eq!(get_i64(&mut &[][..]), None);
    }
}
