//! Multi-process tests: each starts `mpirun` on the `kiln-ddp-worker` binary (see its modes)
//! and checks how the job ends. Without `mpirun` they are skipped with a printed reason,
//! except under `CI=true`, where that is a failure.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One job at a time: the machine has few cores and the failure tests time their jobs.
static ONE_JOB: Mutex<()> = Mutex::new(());

struct Job {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn have_mpirun() -> bool {
    let found = Command::new("mpirun").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mpirun is not installed (CI=true): install openmpi-bin (.ci/install.d/mpi.sh)"
        );
        eprintln!("skipped: mpirun not found (install openmpi-bin to run the multi-process tests)");
    }
    found
}

fn worker() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln-ddp-worker"))
}

/// Starts `mpirun -np N worker args...`; `during` runs while it does (to kill a rank); the
/// job must end within `limit` (it is killed and the test fails otherwise).
fn mpirun(np: usize, args: &[&str], env: &[(&str, &str)], limit: Duration, during: impl FnOnce()) -> Job {
    let _one = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", &np.to_string()]);
    for (k, v) in env {
        cmd.args(["-x", &format!("{k}={v}")]);
    }
    // No single-copy shared memory (needs ptrace rights containers often lack) and one
    // thread per rank.
    cmd.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none").env("RAYON_NUM_THREADS", "1");
    cmd.arg(worker()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start mpirun");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    during();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for mpirun") {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (out_reader.join().unwrap(), err_reader.join().unwrap());
            panic!("mpirun -np {np} {args:?} still running after {limit:?} (a hang)\nstdout:\n{o}\nstderr:\n{e}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = started.elapsed();
    Job { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap(), elapsed }
}

/// Runs a checking mode and requires every rank to report OK.
fn check(np: usize, mode: &str, steps: &str) {
    if !have_mpirun() {
        return;
    }
    let job = mpirun(np, &[mode, steps], &[], Duration::from_secs(120), || ());
    assert!(
        job.status.success(),
        "{mode} on {np} ranks failed ({})\nstdout:\n{}\nstderr:\n{}",
        job.status,
        job.stdout,
        job.stderr
    );
    let oks = job.stdout.lines().filter(|l| l.contains(": OK")).count();
    assert_eq!(oks, np, "every rank must report OK:\n{}", job.stdout);
    eprintln!("{mode} -np {np} ({:.1} s):\n{}", job.elapsed.as_secs_f64(), job.stdout);
}

#[test]
fn mlp_sgd_momentum_matches_one_process_on_2_ranks() {
    check(2, "mlp-sgd", "6");
}

#[test]
fn mlp_sgd_momentum_matches_one_process_on_3_ranks() {
    check(3, "mlp-sgd", "6");
}

#[test]
fn no_sync_accumulation_matches_one_process() {
    check(2, "mlp-sgd-no-sync", "4");
}

#[test]
fn cnn_sync_batchnorm_adam_matches_one_process_on_2_ranks() {
    check(2, "cnn-adam-syncbn", "3");
}

#[test]
fn cnn_sync_batchnorm_adam_matches_one_process_on_3_ranks() {
    check(3, "cnn-adam-syncbn", "3");
}

#[test]
fn cnn_batchnorm_adam_matches_per_rank_statistics() {
    check(2, "cnn-adam-bn", "3");
}

#[test]
fn trainer_fit_averages_figures_and_runs_rank_zero_callbacks_once() {
    check(2, "trainer", "1");
    check(3, "trainer", "1");
}

#[test]
fn unused_parameters_are_averaged_or_left_without_gradient() {
    check(3, "unused", "1");
}

#[test]
fn mismatched_shapes_are_refused_naming_the_parameter() {
    check(3, "mismatch", "1");
}

/// Failure tests: the job must end with an error, well before the worker's one-minute run.
const FAILURE_LIMIT: Duration = Duration::from_secs(30);

#[test]
fn a_panicking_rank_aborts_the_job() {
    if !have_mpirun() {
        return;
    }
    let job = mpirun(2, &["panic"], &[], FAILURE_LIMIT, || ());
    assert!(!job.status.success(), "the job must fail:\n{}", job.stderr);
    assert!(job.stderr.contains("deliberate panic on rank 1"), "stderr:\n{}", job.stderr);
    assert!(job.stderr.contains("aborting the MPI job"), "stderr:\n{}", job.stderr);
    eprintln!("panic: job ended in {:.1} s", job.elapsed.as_secs_f64());
}

#[test]
fn a_killed_rank_ends_the_job() {
    if !have_mpirun() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kiln-ddp-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("rank1.pid");
    let _ = std::fs::remove_file(&pid_file);
    let mut killed_at = None;
    let job = mpirun(3, &["train-forever"], &[("KILN_DDP_PID_DIR", dir.to_str().unwrap())], FAILURE_LIMIT, || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = loop {
            if let Ok(s) = std::fs::read_to_string(&pid_file) {
                if let Ok(p) = s.trim().parse::<u32>() {
                    break p;
                }
            }
            assert!(Instant::now() < deadline, "rank 1 never wrote its pid");
            std::thread::sleep(Duration::from_millis(50));
        };
        // Let training get going, then SIGKILL rank 1.
        std::thread::sleep(Duration::from_millis(700));
        let ok = Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("run kill").success();
        assert!(ok, "could not kill rank 1 (pid {pid})");
        killed_at = Some(Instant::now());
    });
    let _ = std::fs::remove_dir_all(&dir);
    let after = killed_at.expect("killed").elapsed();
    assert!(!job.status.success(), "the job must fail after a rank is killed:\n{}", job.stderr);
    assert!(!job.stdout.contains("without being stopped"), "a rank went on training:\n{}", job.stdout);
    eprintln!("kill: job ended {:.1} s after SIGKILL\n{}", after.as_secs_f64(), job.stderr);
}

#[test]
fn a_stalled_rank_times_out() {
    if !have_mpirun() {
        return;
    }
    let job = mpirun(2, &["stall"], &[("KILN_DIST_TIMEOUT_SECS", "1")], FAILURE_LIMIT, || ());
    assert!(!job.status.success(), "the job must fail:\n{}", job.stderr);
    assert!(job.stderr.contains("did not complete within 1.0 s"), "stderr:\n{}", job.stderr);
    assert!(job.elapsed < Duration::from_secs(20), "took {:?}", job.elapsed);
    eprintln!("stall: job ended in {:.1} s", job.elapsed.as_secs_f64());
}
