//! The one way the collector writes a state file: write a temporary file, fsync it,
//! rename it over the old one, fsync the folder. A kill -9 leaves the old file or the
//! new one, never a mix.

use std::io::Write as _;
use std::path::Path;

/// Replaces `path` with `bytes` atomically (through `<path>.tmp`).
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
