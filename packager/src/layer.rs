//! The containerDisk layer, written in one streaming pass.
//!
//! The layer is a tar of two entries, `disk/` (0555) and `disk/disk.qcow2` (0444), both uid/gid
//! 107 (`qemu`), with one fixed mtime. The tar bytes are hashed (the config's `diff_id`),
//! compressed, and the compressed bytes hashed (the manifest's layer digest) as they flow to
//! the sink: the disk is never held in memory, only a 1 MiB read buffer.
//!
//! Compression (see the docs in `packager/README.md`):
//! - [`Compression::Gzip`] (default) is *stored* gzip (deflate level 0), written by hand: a
//!   10-byte header, 65,535-byte stored blocks and a CRC32 + ISIZE trailer. The qcow2 is already
//!   zstd-compressed inside, so real deflate would cost seconds and save ~1%, while every client
//!   (containerd, Docker, CRI-O, CDI) reads stored gzip;
//! - [`Compression::Zstd`]: zstd level 3 with the multithreaded encoder (the output does not
//!   depend on the number of worker threads, so it stays deterministic);
//! - [`Compression::None`]: a plain tar.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Path of the directory entry in the layer.
pub const DISK_DIR: &str = "disk/";
/// Path of the disk image in the layer (fixed, so the file name never changes the digest).
pub const DISK_FILE: &str = "disk/disk.qcow2";
/// uid and gid of `qemu` in KubeVirt's virt-launcher.
pub const QEMU_ID: u64 = 107;
/// The zstd level of [`Compression::Zstd`].
pub const ZSTD_LEVEL: i32 = 3;

const READ_BUFFER: usize = 1 << 20;
const STORED_BLOCK: usize = 65_535;

/// How the layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Stored (level 0) gzip: read by every client, costs almost nothing.
    #[default]
    Gzip,
    /// zstd level 3, multithreaded: containerd >= 1.5, Docker >= 23, CRI-O, CDI >= 1.57.
    Zstd,
    /// An uncompressed tar.
    None,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compression name that is none of `gzip`, `zstd`, `none`.
#[derive(Debug, thiserror::Error)]
#[error("Unknown layer compression `{0}` (expected `gzip`, `zstd` or `none`)")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            other => Err(UnknownCompression(other.to_owned())),
        }
    }
}

/// What goes into the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    /// The qcow2 to wrap.
    pub disk: PathBuf,
    /// The mtime of both tar entries, in seconds since the epoch (`SOURCE_DATE_EPOCH` or the
    /// build time).
    pub mtime: u64,
    /// The layer compression.
    pub compression: Compression,
}

impl LayerSpec {
    /// A spec for `disk` with the given mtime and compression.
    pub fn new(disk: impl Into<PathBuf>, mtime: u64, compression: Compression) -> Self {
        Self {
            disk: disk.into(),
            mtime,
            compression,
        }
    }
}

/// The digests and sizes of a written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// `sha256:<hex>` of the compressed layer (the manifest's layer digest).
    pub digest: String,
    /// Size of the compressed layer in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar (the config's `diff_id`).
    pub diff_id: String,
    /// Size of the disk image in bytes.
    pub disk_size: u64,
}

/// Writing the layer failed.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The disk image could not be opened.
    #[error("Failed to open the disk image `{}`", path.display())]
    Open {
        /// The disk image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the disk image failed.
    #[error("Failed to read the disk image `{}`", path.display())]
    Read {
        /// The disk image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The disk image's size changed while it was read.
    #[error("The disk image `{}` changed while it was packaged ({expected} bytes became {found})", path.display())]
    Changed {
        /// The disk image.
        path: PathBuf,
        /// Its size when opened.
        expected: u64,
        /// The bytes actually read.
        found: u64,
    },
    /// The compressor or the sink failed.
    #[error("Failed to write the layer of `{}`", path.display())]
    Write {
        /// The disk image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Writes the layer for `spec` into `sink` and returns its digests. `progress` is called with
/// the number of disk bytes consumed after each read.
pub fn write_layer<W: Write>(
    spec: &LayerSpec,
    sink: W,
    progress: &mut dyn FnMut(u64),
) -> Result<LayerDigests, LayerError> {
    let path = &spec.disk;
    let mut file = fs_err::File::open(path).map_err(|source| LayerError::Open {
        path: path.clone(),
        source,
    })?;
    let disk_size = file
        .metadata()
        .map_err(|source| LayerError::Open {
            path: path.clone(),
            source,
        })?
        .len();
    let write_err = |source| LayerError::Write {
        path: path.clone(),
        source,
    };

    let hash_tar = spec.compression != Compression::None;
    let counted = HashingWriter::new(sink);
    let encoder = match spec.compression {
        Compression::Gzip => Encoder::Gzip(StoredGzip::new(counted)),
        Compression::Zstd => Encoder::Zstd(zstd_encoder(counted).map_err(write_err)?),
        Compression::None => Encoder::Plain(counted),
    };
    let mut tar = TarSink {
        diff: hash_tar.then(Sha256::new),
        inner: encoder,
    };

    tar.write_all(&header(
        DISK_DIR,
        tar::EntryType::Directory,
        0o555,
        0,
        spec.mtime,
    ))
    .map_err(write_err)?;
    tar.write_all(&header(
        DISK_FILE,
        tar::EntryType::Regular,
        0o444,
        disk_size,
        spec.mtime,
    ))
    .map_err(write_err)?;
    let mut buf = vec![0u8; READ_BUFFER];
    let mut read_total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(LayerError::Read {
                    path: path.clone(),
                    source,
                });
            }
        };
        read_total += n as u64;
        if read_total > disk_size {
            break;
        }
        tar.write_all(&buf[..n]).map_err(write_err)?;
        progress(n as u64);
    }
    if read_total != disk_size {
        return Err(LayerError::Changed {
            path: path.clone(),
            expected: disk_size,
            found: read_total,
        });
    }
    let pad = (512 - (disk_size % 512) as usize) % 512;
    // Padding of the file, then the two zero blocks that end a tar archive.
    buf[..pad + 1024].fill(0);
    tar.write_all(&buf[..pad + 1024]).map_err(write_err)?;

    let diff = tar.diff.take();
    let counted = tar.inner.finish().map_err(write_err)?;
    let (digest, size, mut sink) = counted.finish();
    sink.flush().map_err(write_err)?;
    let diff_id = match diff {
        Some(h) => format!("sha256:{}", hex::encode(h.finalize())),
        None => digest.clone(),
    };
    Ok(LayerDigests {
        digest,
        size,
        diff_id,
        disk_size,
    })
}

/// The identity of a disk file as the layer cache knows it: where it is, which inode, its size,
/// its modification and change times, and the sha256 the build recorded for it, plus what else
/// decides the layer's bytes (compression and the entries' mtime). The change time (`ctime`)
/// cannot be set by a user, so a file rewritten in place and `touch`ed back never matches.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerKey {
    /// The canonical path of the disk.
    pub path: PathBuf,
    /// Device and inode.
    pub dev: u64,
    /// Inode number.
    pub inode: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i128,
    /// `sha256:<hex>` of the disk as the build manifest records it, if known.
    pub content_sha256: Option<String>,
    /// The layer compression.
    pub compression: String,
    /// The mtime of the tar entries.
    pub entry_mtime: u64,
}

impl LayerKey {
    /// The identity of `spec.disk` now.
    pub fn of(spec: &LayerSpec, content_sha256: Option<&str>) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let path = fs_err::canonicalize(&spec.disk)?;
        let m = fs_err::metadata(&path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Self {
            path,
            dev: m.dev(),
            inode: m.ino(),
            size: m.len(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            content_sha256: content_sha256.map(|s| {
                if s.starts_with("sha256:") {
                    s.to_owned()
                } else {
                    format!("sha256:{s}")
                }
            }),
            compression: spec.compression.as_str().to_owned(),
            entry_mtime: spec.mtime,
        })
    }

    fn file_name(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{}.json", hex::encode(Sha256::digest(&json)))
    }
}

/// Layer digests remembered between runs, one small JSON file per [`LayerKey`] (e.g. under
/// `$XDG_CACHE_HOME/kib/layers`). A remembered digest is only a claim: the publisher trusts it
/// only after the registry confirms it has that blob (HEAD), and streams the layer otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerCache {
    dir: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheEntry {
    key: LayerKey,
    digest: String,
    size: u64,
    diff_id: String,
    disk_size: u64,
}

impl LayerCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$XDG_CACHE_HOME/kib/layers`, else `$HOME/.cache/kib/layers` (the XDG base directory
    /// default); `None` if neither variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty() && std::path::Path::new(d).is_absolute())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })?;
        Some(base.join("kib").join("layers"))
    }

    /// The folder the entries live in.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The digests remembered for `key`, if any (an unreadable entry is no entry).
    pub fn get(&self, key: &LayerKey) -> Option<LayerDigests> {
        let bytes = fs_err::read(self.dir.join(key.file_name())).ok()?;
        let e: CacheEntry = serde_json::from_slice(&bytes).ok()?;
        (e.key == *key).then_some(LayerDigests {
            digest: e.digest,
            size: e.size,
            diff_id: e.diff_id,
            disk_size: e.disk_size,
        })
    }

    /// Remembers `digests` for `key`: written to a temporary file and renamed, so a reader
    /// never sees half an entry.
    pub fn put(&self, key: &LayerKey, digests: &LayerDigests) -> io::Result<()> {
        fs_err::create_dir_all(&self.dir)?;
        let entry = CacheEntry {
            key: key.clone(),
            digest: digests.digest.clone(),
            size: digests.size,
            diff_id: digests.diff_id.clone(),
            disk_size: digests.disk_size,
        };
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&serde_json::to_vec(&entry).map_err(io::Error::other)?)?;
        tmp.persist(self.dir.join(key.file_name()))
            .map_err(|e| e.error)?;
        Ok(())
    }
}

fn zstd_encoder<W: Write>(w: W) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    enc.multithread(threads.max(1))?;
    enc.include_checksum(false)?;
    Ok(enc)
}

/// A GNU tar header (GNU so that disks over 8 GiB get a base-256 size).
fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    // Both paths are short ASCII constants: they fit the 100-byte name field.
    if let Some(gnu) = h.as_gnu_mut() {
        gnu.name[..path.len()].copy_from_slice(path.as_bytes());
    }
    h.set_mode(mode);
    h.set_uid(QEMU_ID);
    h.set_gid(QEMU_ID);
    let _ = h.set_username("qemu");
    let _ = h.set_groupname("qemu");
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_cksum();
    let mut out = [0u8; 512];
    out.copy_from_slice(h.as_bytes());
    out
}

/// Hashes the tar stream (the `diff_id`) and passes it to the compressor.
struct TarSink<W: Write> {
    diff: Option<Sha256>,
    inner: Encoder<W>,
}

impl<W: Write> Write for TarSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(buf)?;
        if let Some(h) = &mut self.diff {
            h.update(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    Plain(HashingWriter<W>),
    Gzip(StoredGzip<HashingWriter<W>>),
    Zstd(zstd::stream::write::Encoder<'static, HashingWriter<W>>),
}

impl<W: Write> Encoder<W> {
    fn finish(self) -> io::Result<HashingWriter<W>> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(g) => g.finish(),
            Encoder::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

/// Hashes and counts the bytes going to `inner`.
struct HashingWriter<W> {
    hash: Sha256,
    count: u64,
    inner: W,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            hash: Sha256::new(),
            count: 0,
            inner,
        }
    }
    fn finish(self) -> (String, u64, W) {
        (
            format!("sha256:{}", hex::encode(self.hash.finalize())),
            self.count,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A gzip member made of stored (uncompressed) deflate blocks.
pub struct StoredGzip<W: Write> {
    inner: W,
    block: Vec<u8>,
    crc: crc32fast::Hasher,
    isize: u32,
    started: bool,
}

/// The gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS "unknown".
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0x00, 0xff];

impl<W: Write> StoredGzip<W> {
    /// Starts a gzip member on `inner`. The header is written with the first block.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            block: Vec::with_capacity(STORED_BLOCK),
            crc: crc32fast::Hasher::new(),
            isize: 0,
            started: false,
        }
    }

    fn start(&mut self) -> io::Result<()> {
        if !self.started {
            self.inner.write_all(&GZIP_HEADER)?;
            self.started = true;
        }
        Ok(())
    }

    fn emit(&mut self, data: &[u8], last: bool) -> io::Result<()> {
        let len = data.len() as u16;
        let nlen = !len;
        let hdr = [
            u8::from(last),
            len as u8,
            (len >> 8) as u8,
            nlen as u8,
            (nlen >> 8) as u8,
        ];
        self.inner.write_all(&hdr)?;
        self.inner.write_all(data)
    }

    fn emit_buffered(&mut self) -> io::Result<()> {
        if !self.block.is_empty() {
            let block = std::mem::take(&mut self.block);
            self.emit(&block, false)?;
            self.block = block;
            self.block.clear();
        }
        Ok(())
    }

    /// Writes the last block and the CRC32 + ISIZE trailer, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.start()?;
        self.emit_buffered()?;
        self.emit(&[], true)?;
        let crc = self.crc.clone().finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&self.isize.to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for StoredGzip<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        self.start()?;
        self.crc.update(buf);
        self.isize = self.isize.wrapping_add(n as u32);
        while !buf.is_empty() {
            if self.block.is_empty() && buf.len() >= STORED_BLOCK {
                let (block, rest) = buf.split_at(STORED_BLOCK);
                self.emit(block, false)?;
                buf = rest;
                continue;
            }
            let take = (STORED_BLOCK - self.block.len()).min(buf.len());
            self.block.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.block.len() == STORED_BLOCK {
                self.emit_buffered()?;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn disk(len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f
    }

    fn layer(spec: &LayerSpec) -> (Vec<u8>, LayerDigests) {
        let mut out = Vec::new();
        let d = write_layer(spec, &mut out, &mut |_| {}).unwrap();
        (out, d)
    }

    #[test]
    fn stored_gzip_decodes_at_block_boundaries() {
        for len in [
            0,
            1,
            STORED_BLOCK - 1,
            STORED_BLOCK,
            STORED_BLOCK + 1,
            3 * STORED_BLOCK + 17,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let mut gz = StoredGzip::new(Vec::new());
            // Odd write sizes exercise the buffering.
            for chunk in data.chunks(7919) {
                gz.write_all(chunk).unwrap();
            }
            let bytes = gz.finish().unwrap();
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "len {len}");
            assert_eq!(bytes[10] & 0b110, 0, "BTYPE must be 00 (stored)");
        }
    }

    #[test]
    fn layer_is_the_tar_kubevirt_expects_and_digests_match() {
        let f = disk(100_000);
        for compression in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let (bytes, d) = layer(&LayerSpec::new(f.path(), 1_700_000_000, compression));
            assert_eq!(
                d.digest,
                format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
            );
            assert_eq!(d.size, bytes.len() as u64);
            let tar_bytes = match compression {
                Compression::Gzip => {
                    let mut v = Vec::new();
                    flate2::read::GzDecoder::new(&bytes[..])
                        .read_to_end(&mut v)
                        .unwrap();
                    v
                }
                Compression::Zstd => zstd::stream::decode_all(&bytes[..]).unwrap(),
                Compression::None => bytes.clone(),
            };
            assert_eq!(
                d.diff_id,
                format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)))
            );
            let mut archive = tar::Archive::new(&tar_bytes[..]);
            let entries: Vec<_> = archive
                .entries()
                .unwrap()
                .map(|e| {
                    let mut e = e.unwrap();
                    let h = e.header().clone();
                    let mut content = Vec::new();
                    e.read_to_end(&mut content).unwrap();
                    let path = e.path().unwrap().to_string_lossy().into_owned();
                    (
                        path,
                        h.mode().unwrap(),
                        h.uid().unwrap(),
                        h.gid().unwrap(),
                        h.mtime().unwrap(),
                        content,
                    )
                })
                .collect();
            assert_eq!(entries.len(), 2);
            assert_eq!((entries[0].0.as_str(), entries[0].1), ("disk/", 0o555));
            assert_eq!(
                (entries[1].0.as_str(), entries[1].1),
                ("disk/disk.qcow2", 0o444)
            );
            for e in &entries {
                assert_eq!((e.2, e.3, e.4), (107, 107, 1_700_000_000));
            }
            assert_eq!(entries[1].5, fs_err::read(f.path()).unwrap());
        }
    }

    #[test]
    fn same_disk_same_digest_other_mtime_other_digest() {
        let f = disk(70_000);
        let spec = LayerSpec::new(f.path(), 42, Compression::Gzip);
        let (_, a) = layer(&spec);
        let (_, b) = layer(&spec);
        assert_eq!(a, b);
        let (_, z1) = layer(&LayerSpec {
            compression: Compression::Zstd,
            ..spec.clone()
        });
        let (_, z2) = layer(&LayerSpec {
            compression: Compression::Zstd,
            ..spec.clone()
        });
        assert_eq!(z1, z2, "zstd layers must be deterministic too");
        let (_, c) = layer(&LayerSpec { mtime: 43, ..spec });
        assert_ne!(a.digest, c.digest);
    }

    #[test]
    fn the_cache_remembers_a_file_until_it_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let f = disk(10_000);
        let spec = LayerSpec::new(f.path(), 7, Compression::Gzip);
        let cache = LayerCache::new(dir.path().join("layers"));
        let key = LayerKey::of(&spec, Some("ab")).unwrap();
        assert_eq!(key.content_sha256.as_deref(), Some("sha256:ab"));
        assert_eq!(cache.get(&key), None);
        let (_, d) = layer(&spec);
        cache.put(&key, &d).unwrap();
        assert_eq!(
            cache.get(&LayerKey::of(&spec, Some("ab")).unwrap()),
            Some(d.clone())
        );
        // Another build-manifest sha256, compression or entry mtime: another layer.
        assert_eq!(cache.get(&LayerKey::of(&spec, Some("cd")).unwrap()), None);
        let zstd = LayerSpec {
            compression: Compression::Zstd,
            ..spec.clone()
        };
        assert_eq!(cache.get(&LayerKey::of(&zstd, Some("ab")).unwrap()), None);
        // The same bytes written again in place, mtime put back: the change time differs.
        let before = fs_err::metadata(f.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs_err::write(f.path(), fs_err::read(f.path()).unwrap()).unwrap();
        fs_err::File::options()
            .write(true)
            .open(f.path())
            .unwrap()
            .set_modified(before.modified().unwrap())
            .unwrap();
        let after = LayerKey::of(&spec, Some("ab")).unwrap();
        assert_eq!(after.mtime_ns, key.mtime_ns);
        assert_eq!(cache.get(&after), None);
        // A corrupt entry is no entry.
        for e in fs_err::read_dir(dir.path().join("layers")).unwrap() {
            fs_err::write(e.unwrap().path(), "{").unwrap();
        }
        assert_eq!(cache.get(&key), None);
    }

    #[test]
    fn missing_disk_names_the_path() {
        let err = write_layer(
            &LayerSpec::new("/nonexistent/x.qcow2", 0, Compression::Gzip),
            std::io::sink(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.qcow2"), "{err}");
    }
}
