//! kiln's developer commands, run as `cargo xtask <command>`:
//!
//! - `cargo xtask bench [--workloads W1,W8] [--threads 1,2] [--out kiln.json] [--pytorch]`
//!   runs the workloads of `../shared/bench/workloads.md` that kiln implements and writes the
//!   JSON records of `../shared/bench/README.md`; with `--pytorch` it then runs the PyTorch
//!   baseline on the same machine and prints `compare.py`'s ratio table.

mod bench;
mod workloads;

use std::process::ExitCode;

const USAGE: &str = "usage:
  cargo xtask bench [--workloads W1,W8] [--threads 1,2] [--out kiln.json]
                    [--pytorch] [--pytorch-out pytorch.json] [--shared DIR] [--quick]

  --workloads   comma list of workload ids (default: every workload kiln implements)
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
        Some("help") | Some("--help") | Some("-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
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
