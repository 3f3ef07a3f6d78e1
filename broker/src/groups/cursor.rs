//! A bounds-checked reader of big-endian fields, for the bytes the groups
//! decode: the offsets log's records and the `consumer` protocol's
//! assignments. Every read checks the bytes left first, so no length read
//! from the input can make it allocate or panic.

/// The bytes not yet read.
pub(super) struct Cursor<'a>(pub(super) &'a [u8]);

impl<'a> Cursor<'a> {
    /// The next `n` bytes; `None` when fewer are left.
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// The next `N` bytes as an array (for `from_be_bytes`).
    pub(super) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A string behind an unsigned 16-bit length.
    pub(super) fn string(&mut self) -> Option<String> {
        let len = u16::from_be_bytes(self.array()?);
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }
}
