//! The model in a browser, end to end: kiln trains the MNIST CNN of `examples/cnn_mnist.rs`
//! briefly (a slice of the training set), exports it to ONNX, and a static server on 127.0.0.1
//! serves `web/` (the page, onnxruntime-web and its .wasm files from `web/node_modules`) with
//! that model. `web/test/drive.mjs` opens the page in headless Chromium through playwright-core,
//! draws real MNIST test digits on the canvas with pointer events, and reads back what the page
//! shows (predicted class, the ten probabilities) and what it fed the model (the normalised
//! 28x28 input). kiln then runs its own forward pass on exactly those inputs: every prediction
//! must equal the page's (only a near-tie between kiln's two best classes may differ, and
//! at least 20 of the 24 must match), and the probabilities agree within 1e-4. A screenshot of the page
//! after the last digit goes to `target/web/screenshot.png`.
//!
//! Needs `node`, Chromium (`/usr/bin/chromium`, or `KILN_CHROMIUM`), `npm ci` run in `web/`
//! and the MNIST files (`KILN_DATA_DIR`); without one of them the test skips with the reason,
//! and fails under `CI=true` (`.ci/install.d/web.sh` installs them).
//!
//!     cargo test -p kiln-onnx --test browser -- --nocapture

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln::autograd::{no_grad, Var};
use kiln::data::datasets::{Mnist, Split};
use kiln::data::{DataLoader, DatasetExt};
use kiln::nn::{Forward, Module, NLLLoss};
use kiln::optim::{Adam, AdamConfig};
use kiln::tensor::Tensor;
use kiln::train::{Trainer, Verbosity};
use kiln_onnx::{export, ExportOptions};

#[path = "../../../examples/cnn_mnist.rs"]
#[allow(dead_code)]
mod cnn_mnist;
#[path = "../../../examples/common.rs"]
#[allow(clippy::duplicate_mod)] // cnn_mnist includes it too
mod common;

/// Training images: enough for a model whose answers differ between digits (the test checks
/// agreement between the page and kiln, not accuracy), few enough for a few seconds.
const TRAIN_IMAGES: usize = 2048;
/// MNIST test digits drawn on the page.
const DIGITS: usize = 24;
/// Largest |probability on the page - kiln's probability| accepted.
const PROBABILITY_TOLERANCE: f64 = 1e-4;
/// How long the browser run may take before it is stopped.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

/// Skips with `why`, or fails when `CI=true`.
fn skip(why: &str) {
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "CI=true and the browser test cannot run: {why}");
    eprintln!("skipped the browser test: {why}");
}

/// What is missing to run the browser, if anything.
fn missing_tools(chromium: &Path) -> Option<String> {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => return Some(format!("`node --version` failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => return Some(format!("node cannot run ({e}); apt-get install nodejs npm")),
    }
    if !chromium.is_file() {
        return Some(format!("{} not found; apt-get install chromium (or set KILN_CHROMIUM)", chromium.display()));
    }
    let modules = web_dir().join("node_modules");
    for package in ["playwright-core/package.json", "onnxruntime-web/dist"] {
        if !modules.join(package).exists() {
            return Some(format!("{} not found; run `npm ci` in web/", modules.join(package).display()));
        }
    }
    None
}

/// A static file server on 127.0.0.1 (one thread per connection): `/model/mnist_cnn.onnx` is
/// `model`, every other path a file under `root`. Returns the port and the paths served.
fn serve(root: PathBuf, model: PathBuf) -> (u16, Arc<Mutex<BTreeSet<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("local address").port();
    let served = Arc::new(Mutex::new(BTreeSet::new()));
    let log = Arc::clone(&served);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (root, model, log) = (root.clone(), model.clone(), Arc::clone(&log));
            std::thread::spawn(move || {
                // A browser may open a connection and never use it: that thread just ends with it.
                let _ = respond(stream, &root, &model, &log);
            });
        }
    });
    (port, served)
}

fn respond(stream: TcpStream, root: &Path, model: &Path, log: &Mutex<BTreeSet<String>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let file = match path {
        "/" => Some(root.join("index.html")),
        "/model/mnist_cnn.onnx" => Some(model.to_path_buf()),
        p if p.split('/').any(|s| s == "..") => None,
        p => Some(root.join(p.trim_start_matches('/'))),
    };
    let body = file.filter(|f| f.is_file()).and_then(|f| std::fs::read(f).ok());
    let mut stream = stream;
    match body {
        Some(body) if method == "GET" || method == "HEAD" => {
            log.lock().unwrap().insert(path.to_string());
            let ext = path.rsplit('.').next().unwrap_or("");
            let kind = match ext {
                "html" => "text/html; charset=utf-8",
                "js" | "mjs" => "text/javascript; charset=utf-8",
                "css" => "text/css; charset=utf-8",
                "wasm" => "application/wasm",
                "json" => "application/json",
                _ => "application/octet-stream",
            };
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            if method == "GET" {
                stream.write_all(&body)?;
            }
        }
        _ => {
            let text = format!("not found: {path}");
            write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            )?;
        }
    }
    stream.flush()
}

/// Runs `cmd` with its output in files under `dir`; `Err` with the output when it fails or
/// outlives `timeout`.
fn run_with_timeout(mut cmd: Command, dir: &Path, timeout: Duration) -> Result<String, String> {
    let (out_path, err_path) = (dir.join("drive.stdout"), dir.join("drive.stderr"));
    let out = std::fs::File::create(&out_path).expect("create stdout file");
    let err = std::fs::File::create(&err_path).expect("create stderr file");
    let mut child = cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err)).spawn().map_err(|e| format!("spawn: {e}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if started.elapsed() > timeout {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = format!(
        "{}{}",
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default()
    );
    match status {
        Some(s) if s.success() => Ok(text),
        Some(s) => Err(format!("{s}:\n{text}")),
        None => Err(format!("stopped after {timeout:?}:\n{text}")),
    }
}

/// One digit as the page showed it.
struct Shown {
    label: usize,
    predicted: usize,
    probabilities: Vec<f64>,
    input: Vec<f32>,
}

fn parse_results(text: &str) -> Vec<Shown> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 2 + 10 + 28 * 28, "result line {i}: {} fields", f.len());
            let num = |s: &str| s.parse::<f64>().unwrap_or_else(|e| panic!("result line {i}: {s:?}: {e}"));
            Shown {
                label: f[0].parse().expect("label"),
                predicted: f[1].parse().unwrap_or_else(|e| panic!("result line {i}: predicted class {:?}: {e}", f[1])),
                probabilities: f[2..12].iter().map(|s| num(s)).collect(),
                input: f[12..].iter().map(|s| num(s) as f32).collect(),
            }
        })
        .collect()
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, j| if v[j] > v[b] { j } else { b })
}

/// Softmax of each row of `scores` (`[n, k]`), in f64, as the page computes it.
fn softmax_rows(scores: &Tensor<f32>) -> Vec<Vec<f64>> {
    let k = scores.shape()[1];
    scores
        .to_vec()
        .chunks(k)
        .map(|row| {
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        })
        .collect()
}

/// A 28x28 image averaged over each pixel's 3x3 neighbourhood (zeros outside), so that a
/// one-pixel shift of a thin stroke still overlaps.
fn blur(a: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; 28 * 28];
    for y in 0..28usize {
        for x in 0..28usize {
            let mut s = 0.0;
            for yy in y.saturating_sub(1)..(y + 2).min(28) {
                for xx in x.saturating_sub(1)..(x + 2).min(28) {
                    s += a[yy * 28 + xx];
                }
            }
            out[y * 28 + x] = s / 9.0;
        }
    }
    out
}

/// Pearson correlation of two equally long slices.
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().map(|&v| v as f64).sum::<f64>() / n, b.iter().map(|&v| v as f64).sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn page_classifies_drawn_mnist_digits_as_kiln_does() {
    let chromium = std::env::var_os("KILN_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if let Some(why) = missing_tools(&chromium) {
        return skip(&why);
    }
    let dir = common::data_folder("mnist");
    let (train, test) = match (Mnist::new(&dir, Split::Train), Mnist::new(&dir, Split::Test)) {
        (Ok(train), Ok(test)) => (train, test),
        (Err(e), _) | (_, Err(e)) => return skip(&format!("MNIST: {e} (set KILN_DATA_DIR to the shared data folder)")),
    };

    // kiln: train briefly, export.
    let started = Instant::now();
    kiln::nn::init::manual_seed(0);
    let train = common::first(train, Some(TRAIN_IMAGES)).map_input(cnn_mnist::normalise);
    let loader = DataLoader::new(train, 64).shuffle(true).seed(1);
    let mut model = cnn_mnist::model();
    let mut opt = Adam::new(model.parameters(), AdamConfig { lr: 1e-3, ..Default::default() });
    Trainer::new(1)
        .verbosity(Verbosity::Silent)
        .fit(&mut model, &mut opt, &NLLLoss::default(), &loader, None)
        .expect("training");
    model.eval();
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("browser_{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let onnx = tmp.join("mnist_cnn.onnx");
    export(&model, &Tensor::zeros(&[1, 1, 28, 28]), &onnx, ExportOptions::default()).expect("export");
    eprintln!("kiln: trained on {TRAIN_IMAGES} images and exported in {:.1} s", started.elapsed().as_secs_f64());

    // The digits to draw: a label byte, then the 784 pixel bytes.
    let mut digits = Vec::with_capacity(DIGITS * 785);
    for i in 0..DIGITS {
        digits.push(test.labels()[i]);
        digits.extend_from_slice(test.image_bytes(i));
    }
    std::fs::write(tmp.join("digits.bin"), &digits).unwrap();

    // The browser.
    let (port, served) = serve(web_dir(), onnx.clone());
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target folder").join("web/screenshot.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let mut cmd = Command::new("node");
    cmd.current_dir(web_dir())
        .arg("test/drive.mjs")
        .args(["--url", &format!("http://127.0.0.1:{port}/index.html")])
        .arg("--digits")
        .arg(tmp.join("digits.bin"))
        .arg("--out")
        .arg(tmp.join("results.txt"))
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--chromium")
        .arg(&chromium);
    let started = Instant::now();
    let log = run_with_timeout(cmd, &tmp, BROWSER_TIMEOUT).unwrap_or_else(|e| panic!("web/test/drive.mjs failed: {e}"));
    eprint!("{log}");
    eprintln!("browser: {DIGITS} digits drawn and classified in {:.1} s", started.elapsed().as_secs_f64());
    let shown = parse_results(&std::fs::read_to_string(tmp.join("results.txt")).unwrap());
    assert_eq!(shown.len(), DIGITS);

    // The page used the local onnxruntime-web build and its wasm backend, and loaded kiln's model.
    let served = served.lock().unwrap().clone();
    assert!(served.contains("/model/mnist_cnn.onnx"), "the page never fetched the model: {served:?}");
    assert!(
        served.iter().any(|p| p.starts_with("/node_modules/onnxruntime-web/dist/") && p.ends_with(".wasm")),
        "no onnxruntime-web .wasm file was served from web/node_modules: {served:?}"
    );

    // kiln on exactly the inputs the page fed the model.
    let inputs: Vec<f32> = shown.iter().flat_map(|s| s.input.iter().copied()).collect();
    let scores = no_grad(|| model.forward(&Var::constant(Tensor::from_vec(inputs, &[DIGITS, 1, 28, 28]))).value());
    let kiln_probs = softmax_rows(&scores);
    let (lo, hi) = ((0.0 - 0.1307) / 0.3081, (1.0 - 0.1307) / 0.3081);
    let mut worst = 0.0f64;
    let (mut page_correct, mut agree) = (0, 0);
    let mut correlations = vec![];
    for (i, (s, k)) in shown.iter().zip(&kiln_probs).enumerate() {
        assert!(
            s.input.iter().all(|&v| (lo - 1e-5..=hi + 1e-5).contains(&(v as f64))),
            "digit {i}: the page's input is not MNIST-normalised"
        );
        let kiln_class = argmax(k);
        assert_eq!(s.predicted, argmax(&s.probabilities), "digit {i}: the page's prediction is not its largest bar");
        if s.predicted == kiln_class {
            agree += 1;
        } else {
            // Only a near tie between kiln's two best classes may go either way in another runtime.
            let mut sorted = k.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            assert!(
                sorted[0] - sorted[1] < 1e-5,
                "digit {i} (label {}): page {:?}, kiln {k:?}",
                s.label,
                s.probabilities
            );
        }
        for (p, q) in s.probabilities.iter().zip(k) {
            worst = worst.max((p - q).abs());
        }
        page_correct += usize::from(s.predicted == s.label);
        // What the page fed the model is the drawn digit, scaled and centred as MNIST's own: it
        // correlates with the MNIST original (both blurred, as a redrawn stroke may land a pixel
        // off).
        let original: Vec<f32> = test.image_bytes(i).iter().map(|&b| (b as f32 / 255.0 - 0.1307) / 0.3081).collect();
        correlations.push(correlation(&blur(&s.input), &blur(&original)));
    }
    let mean_corr = correlations.iter().sum::<f64>() / DIGITS as f64;
    eprintln!(
        "page = kiln on {agree}/{DIGITS} drawn digits, max |probability difference| {worst:.2e}; \
         page correct on {page_correct}/{DIGITS}; input vs MNIST original: mean correlation (3x3-blurred) {mean_corr:.3} (min {:.3})",
        correlations.iter().cloned().fold(f64::INFINITY, f64::min)
    );
    eprintln!("screenshot: {}", screenshot.display());
    assert!(agree >= 20);
    assert!(worst <= PROBABILITY_TOLERANCE, "probabilities differ by {worst:e} > {PROBABILITY_TOLERANCE:e}");
    assert!(
        mean_corr > 0.75 && correlations.iter().all(|&c| c > 0.5),
        "the page's inputs do not look like the drawn digits: correlations {correlations:?}"
    );
    // Predictions differ between digits (a constant answer would agree trivially).
    let classes: BTreeSet<usize> = shown.iter().map(|s| s.predicted).collect();
    assert!(classes.len() >= 5, "the page predicted only {classes:?}");
    assert!(screenshot.is_file());
    std::fs::remove_dir_all(&tmp).ok();
}

/// The page's preprocessing alone (`web/test/preprocess.test.mjs`, node's test runner): a
/// drawing's bounding box scaled into 20x20 keeping its aspect ratio, area-averaged, centred by
/// mass in 28x28, normalised as kiln trained.
#[test]
fn page_preprocessing_passes_its_unit_tests() {
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return skip("node cannot run; apt-get install nodejs"),
    }
    let out = Command::new("node")
        .current_dir(web_dir())
        .args(["--test", "test/preprocess.test.mjs"])
        .output()
        .expect("run node --test");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "web/test/preprocess.test.mjs failed:\n{text}");
    assert!(text.contains("# fail 0") && !text.contains("# pass 0"), "no test passed, or one failed:\n{text}");
}
