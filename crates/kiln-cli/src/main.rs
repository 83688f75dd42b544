//! `kiln`: inspect, convert and diff model files (safetensors, PyTorch `.pt`/`.pth`, kiln
//! checkpoints, ONNX).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_cli::{CliError, Diff, Weights};

const EXIT_CODES: &str = "\
Exit codes:
  0  success (for diff: the files hold the same tensors, within tolerance)
  1  failure: a file cannot be read or written, or (diff) the files differ
  2  usage error (unknown command or option, missing argument)

Formats are recognised by their first bytes: safetensors, PyTorch checkpoints (torch.save's
zip and legacy formats, read as torch.load(weights_only=True) does: a pickle naming code such
as os.system is refused), and kiln training checkpoints (KILNCKPT); ONNX models by their .onnx
extension (their initializers are the tensors).";

/// Inspect, convert and compare model files.
#[derive(Parser)]
#[command(name = "kiln", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List a file's tensors (key, dtype, shape), parameter count and metadata.
    #[command(after_help = EXIT_CODES)]
    Inspect {
        /// The model file.
        file: PathBuf,
        /// For a PyTorch checkpoint: the dotted key path whose tensors to list (default: all).
        #[arg(long)]
        key: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Convert a model file to safetensors, or to a PyTorch checkpoint when OUTPUT ends in
    /// .pt/.pth (read back by torch.load(weights_only=True)), keeping each tensor's dtype
    /// (written atomically).
    #[command(after_help = EXIT_CODES)]
    Convert {
        /// The file to read (.pt/.pth, .safetensors, a kiln checkpoint or .onnx).
        input: PathBuf,
        /// The file to write: .pt/.pth for PyTorch, anything else for safetensors.
        output: PathBuf,
        /// For a PyTorch checkpoint: the dotted key path of the weights (default: the saved
        /// state_dict, or the `model`/`state_dict` entry of a checkpoint dict; "" for all).
        #[arg(long)]
        key: Option<String>,
        /// Print a JSON summary of what was written.
        #[arg(long)]
        json: bool,
    },
    /// Compare the tensors of two files: per-tensor max abs/rel difference, missing keys,
    /// shape mismatches. Exit code 1 when they differ.
    #[command(after_help = EXIT_CODES)]
    Diff {
        /// First file.
        a: PathBuf,
        /// Second file (the reference for relative differences).
        b: PathBuf,
        /// Absolute tolerance: elements within atol + rtol * |b| count as equal.
        #[arg(long, default_value_t = 0.0)]
        atol: f64,
        /// Relative tolerance.
        #[arg(long, default_value_t = 0.0)]
        rtol: f64,
        /// Print JSON instead of a report.
        #[arg(long)]
        json: bool,
    },
}

fn run(cli: Cli) -> Result<bool, CliError> {
    match cli.command {
        Command::Inspect { file, key, json } => {
            let key = key.or_else(|| Some(String::new()));
            let w = Weights::read(&file, key.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&w.to_json()).expect("JSON values serialise"));
            } else {
                println!("{}", w.listing());
            }
            Ok(true)
        }
        Command::Convert { input, output, key, json } => {
            let w = Weights::read(&input, key.as_deref())?;
            let to = w.write(&output)?;
            if json {
                let summary = serde_json::json!({
                    "input": input.display().to_string(),
                    "output": output.display().to_string(),
                    "from": w.format.name(),
                    "to": to,
                    "tensors": w.tensors.len(),
                    "parameters": w.parameter_count(),
                });
                println!("{summary}");
            } else {
                println!(
                    "{} ({}) -> {} ({to}): {} tensors, {} parameters",
                    input.display(),
                    w.format.name(),
                    output.display(),
                    w.tensors.len(),
                    w.parameter_count()
                );
            }
            Ok(true)
        }
        Command::Diff { a, b, atol, rtol, json } => {
            let (wa, wb) = (Weights::read(&a, None)?, Weights::read(&b, None)?);
            let d = Diff::new(&wa, &wb, atol, rtol);
            if json {
                println!("{}", serde_json::to_string_pretty(&d.to_json()).expect("JSON values serialise"));
            } else {
                println!("{}", d.report());
            }
            Ok(d.is_same())
        }
    }
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help / --version.
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::from(1)
        }
    }
}
