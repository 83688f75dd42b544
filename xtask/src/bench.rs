//! The benchmark harness: timing rules, records and the PyTorch comparison.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::workloads::{self, Workload};

/// Parsed `cargo xtask bench` options.
pub struct Options {
    pub workloads: Vec<String>,
    pub threads: Vec<usize>,
    pub out: PathBuf,
    pub pytorch: bool,
    pub pytorch_out: PathBuf,
    pub shared: PathBuf,
    pub quick: bool,
}

pub fn parse(args: &[String]) -> Result<Options, String> {
    let root = repo_root();
    let mut o = Options {
        workloads: workloads::all()
            .iter()
            .filter(|w| !workloads::EXTRA.contains(&w.id))
            .map(|w| w.id.to_string())
            .collect(),
        threads: vec![1, 2],
        out: PathBuf::from("kiln.json"),
        pytorch: false,
        pytorch_out: PathBuf::from("pytorch.json"),
        shared: root.join("../shared"),
        quick: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--workloads" => {
                let v = value("--workloads")?;
                let known: Vec<&str> = workloads::all().iter().map(|w| w.id).collect();
                o.workloads = Vec::new();
                for w in v.split(',').map(|w| w.trim().to_uppercase()).filter(|w| !w.is_empty()) {
                    if !known.contains(&w.as_str()) {
                        return Err(format!("--workloads: kiln does not implement `{w}` (it has {})", known.join(",")));
                    }
                    o.workloads.push(w);
                }
            }
            "--threads" => {
                let v = value("--threads")?;
                o.threads = v
                    .split(',')
                    .map(|t| {
                        t.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| format!("--threads: `{t}` is not a positive integer"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--out" => o.out = value("--out")?.into(),
            "--pytorch" => o.pytorch = true,
            "--pytorch-out" => o.pytorch_out = value("--pytorch-out")?.into(),
            "--shared" => o.shared = value("--shared")?.into(),
            "--quick" => o.quick = true,
            other => return Err(format!("bench: unknown argument `{other}`")),
        }
    }
    Ok(o)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the repo").to_path_buf()
}

/// One result row, in the schema of `../shared/bench/README.md`.
#[derive(Serialize, Clone, Debug)]
pub struct Record {
    pub workload: String,
    pub variant: String,
    pub threads: usize,
    pub value: f64,
    pub unit: String,
    pub framework: String,
    pub version: String,
    pub cpu: String,
    pub date: String,
    pub name: String,
    pub reps: usize,
    pub warmup: usize,
    pub stat: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_load_pct: Option<f64>,
    /// W13: processes in the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
    /// W13: the communication library (`mpi`: Open MPI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// W13: the workload whose model is trained (`W2`, `W3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// The timing rules of workloads.md: >= 5 warm-up repetitions, then single repetitions timed
/// until both >= 20 of them and >= 1 s of timed work are collected (at most 1000); the median.
pub struct Timer {
    pub warmup: usize,
    pub min_reps: usize,
    pub min_time: f64,
    pub max_reps: usize,
}

impl Timer {
    pub fn median(&self, mut f: impl FnMut()) -> (f64, usize) {
        for _ in 0..self.warmup {
            f();
        }
        let mut times = Vec::new();
        let mut total = 0.0;
        while times.len() < self.min_reps || (total < self.min_time && times.len() < self.max_reps) {
            let t0 = Instant::now();
            f();
            let dt = t0.elapsed().as_secs_f64();
            total += dt;
            times.push(dt);
        }
        times.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
        let n = times.len();
        let med = if n % 2 == 1 { times[n / 2] } else { 0.5 * (times[n / 2 - 1] + times[n / 2]) };
        (med, n)
    }
}

/// CPU time other processes used while a workload ran, as % of all cores: machine busy time
/// from /proc/stat minus this process's own CPU time (the same measure as the PyTorch side).
pub struct OtherLoad {
    start: Option<(f64, f64, Instant)>,
}

impl OtherLoad {
    pub fn start() -> Self {
        OtherLoad { start: Self::sample().map(|(b, o)| (b, o, Instant::now())) }
    }
    fn sample() -> Option<(f64, f64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<f64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let tck = 100.0; // USER_HZ on Linux
        let busy = (v.iter().sum::<f64>() - v.get(3).copied().unwrap_or(0.0) - v.get(4).copied().unwrap_or(0.0)) / tck;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // fields after the ")" of the command name: utime, stime, cutime, cstime are fields
        // 14-17 (1-based); waited-for children (W9's child process) count as our own
        let rest = &own[own.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let own = (11..15).map(|i| f.get(i).and_then(|v| v.parse::<f64>().ok())).sum::<Option<f64>>()? / tck;
        Some((busy, own))
    }
    pub fn pct(&self) -> Option<f64> {
        let (b0, o0, t0) = self.start?;
        let (b1, o1) = Self::sample()?;
        let wall = t0.elapsed().as_secs_f64();
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        Some(((b1 - b0) - (o1 - o0)).max(0.0) / (wall * cpus).max(1e-9) * 100.0)
    }
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn version() -> String {
    let rev = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match rev {
        Some(r) if !r.is_empty() => format!("{}+{r}", env!("CARGO_PKG_VERSION")),
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn utc_now() -> String {
    // Civil-from-days (Howard Hinnant), to avoid a date dependency.
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A measured figure from a workload, before the run's common fields are added.
pub struct Figure {
    pub variant: String,
    pub value: f64,
    pub unit: &'static str,
    pub reps: usize,
}

pub fn run(o: &Options) -> Result<(), String> {
    let timer = if o.quick {
        Timer { warmup: 1, min_reps: 3, min_time: 0.0, max_reps: 3 }
    } else {
        Timer { warmup: 5, min_reps: 20, min_time: 1.0, max_reps: 1000 }
    };
    if o.quick {
        eprintln!("note: --quick uses fewer repetitions than workloads.md asks for; smoke test only");
    }
    // opt-in (kiln_tensor::alloc): `KILN_TUNE_MALLOC=1 cargo xtask bench ...` measures with it
    println!("malloc tuned for reuse (KILN_TUNE_MALLOC): {}", kiln_tensor::alloc::allocator_tuned());
    let date = utc_now();
    let (cpu, ver) = (cpu_model(), version());
    let selected: Vec<&Workload> = workloads::all().iter().filter(|w| o.workloads.iter().any(|s| s == w.id)).collect();
    let mut records = Vec::new();
    for (pass, &threads) in o.threads.iter().enumerate() {
        kiln_tensor::set_num_threads(threads);
        for w in &selected {
            // W13 runs once per harness run, with the first thread count; its ranks use 1
            // thread each.
            let w13 = w.id == "W13";
            if w13 && pass > 0 {
                continue;
            }
            let load = OtherLoad::start();
            let figures = (w.run)(&timer);
            let other = load.pct();
            for f in figures {
                let r = Record {
                    workload: w.id.into(),
                    model: w13.then(|| workloads::w13_ddp::model_of(&f.variant).to_string()),
                    variant: f.variant,
                    threads: if w13 { 1 } else { threads },
                    value: f.value,
                    unit: f.unit.into(),
                    framework: "kiln".into(),
                    version: ver.clone(),
                    cpu: cpu.clone(),
                    date: date.clone(),
                    name: w.name.into(),
                    reps: f.reps,
                    warmup: timer.warmup,
                    stat: "median".into(),
                    other_load_pct: other.map(|p| (p * 10.0).round() / 10.0),
                    ranks: w13.then_some(2),
                    backend: w13.then(|| "mpi".to_string()),
                };
                println!(
                    "{:<3} {:<14} {:<22} threads={} {:>10.3} {:<8} (reps {}, other load {})",
                    r.workload,
                    r.name,
                    r.variant,
                    r.threads,
                    r.value,
                    r.unit,
                    r.reps,
                    other.map(|p| format!("{p:.0}%")).unwrap_or_else(|| "?".into())
                );
                if other.is_some_and(|p| p > 5.0) {
                    eprintln!(
                        "warning: other processes used {:.0}% of the CPU during {}: the figure is suspect",
                        other.unwrap_or(0.0),
                        r.workload
                    );
                }
                records.push(r);
            }
        }
    }
    write_json(&o.out, &records)?;
    println!("wrote {} records to {}", records.len(), o.out.display());
    if o.pytorch {
        let bench = o.shared.join("bench");
        let script = bench.join("pytorch_baseline.py");
        let threads: Vec<String> = o.threads.iter().map(|t| t.to_string()).collect();
        // PyTorch's harness knows W1..W9 only (kiln's extra figures have no PyTorch row)
        let shared: Vec<String> = o.workloads.iter().filter(|w| w.starts_with('W')).cloned().collect();
        let mut cmd = Command::new("python3");
        cmd.arg(&script)
            .args(["--threads", &threads.join(","), "--workloads", &shared.join(",")])
            .arg("--out")
            .arg(&o.pytorch_out);
        if o.quick {
            cmd.args(["--warmup", "1", "--min-reps", "3", "--min-time", "0", "--max-reps", "3"]);
        }
        let st = cmd.status().map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !st.success() {
            return Err(format!(
                "{} failed ({st}); is PyTorch installed? see {}",
                script.display(),
                bench.join("README.md").display()
            ));
        }
        let st = Command::new("python3")
            .arg(bench.join("compare.py"))
            .arg(&o.pytorch_out)
            .arg(&o.out)
            .status()
            .map_err(|e| format!("cannot run compare.py: {e}"))?;
        if !st.success() {
            return Err(format!("compare.py failed ({st})"));
        }
    }
    Ok(())
}

/// Writes the records atomically (temporary file, then rename).
fn write_json(path: &Path, records: &[Record]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(records).map_err(|e| e.to_string())? + "\n";
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))
}
