//! kiln's developer commands, run as `cargo xtask <command>`:
//!
//! - `cargo xtask download NAME [--dir DIR]` fetches a data set with kiln-data's download
//!   code (checksums verified, atomic writes).
//! - `cargo xtask bench [--workloads W1,W8] [--threads 1,2] [--out kiln.json] [--pytorch]`
//!   runs the workloads of `../shared/bench/workloads.md` that kiln implements and writes the
//!   JSON records of `../shared/bench/README.md`; with `--pytorch` it then runs the PyTorch
//!   baseline on the same machine and prints `compare.py`'s ratio table.

mod bench;
mod workloads;

use std::process::ExitCode;

const USAGE: &str = "usage:
  cargo xtask download NAME [--dir DIR]
                    NAME: mnist | fashion-mnist | cifar10 | imdb | ptb | all
                    DIR defaults to $KILN_DATA_DIR, else ./data; files are verified by checksum,
                    written atomically, and skipped when already present and verified
  cargo xtask bench [--workloads W1,W8] [--threads 1,2] [--out kiln.json]
                    [--pytorch] [--pytorch-out pytorch.json] [--shared DIR] [--quick]

  --workloads   comma list of workload ids (default: every workload kiln implements but the
                extra W13, data-parallel over `mpirun -np 2`, run only when named)
  --threads     comma list of thread counts (default: 1,2)
  --out         where to write kiln's records (default: kiln.json)
  --pytorch     also run ../shared/bench/pytorch_baseline.py on the same workloads and threads,
                then print compare.py's ratio table
  --pytorch-out where to write PyTorch's records (default: pytorch.json)
  --shared      the shared folder (default: ../shared beside the repository)
  --quick       fewer repetitions (smoke test only; numbers are not comparable)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench::parse(&args[1..]).and_then(|opts| bench::run(&opts)),
        Some("download") => download(&args[1..]),
        // internal: W9 in a fresh process (peak RSS of its own)
        Some("__w9") => {
            let threads = args.get(1).and_then(|t| t.parse().ok()).unwrap_or(1);
            let epochs = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(5);
            kiln_tensor::set_num_threads(threads);
            let (t, peak, before) = workloads::w9_epoch::child(epochs);
            println!("{t} {peak} {before}");
            Ok(())
        }
        // internal: one rank of a W13 job, started by `mpirun` (see workloads/w13_ddp.rs)
        Some("__w13") => workloads::w13_ddp::rank(&args[1..]),
        Some("help") | Some("--help") | Some("-h") => {
            println!("{USAGE}");
            Ok(())
        }
        // No command is a usage error like any other: usage on standard error, exit code 2.
        None => Err(format!("no command given\n{USAGE}")),
        Some(other) => Err(format!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn download(args: &[String]) -> Result<(), String> {
    let mut name = None;
    let mut dir = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = Some(it.next().ok_or("--dir needs a value")?.clone()),
            s if s.starts_with("--") => return Err(format!("download: unknown argument `{s}`\n{USAGE}")),
            s => name = Some(s.to_string()),
        }
    }
    let name = name.ok_or_else(|| format!("download: which data set?\n{USAGE}"))?;
    let dir = dir.or_else(|| std::env::var("KILN_DATA_DIR").ok()).unwrap_or_else(|| "data".to_string());
    let files = kiln_data::download::download_dataset(&name, &dir).map_err(|e| e.to_string())?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}
