//! A writer killed with SIGKILL in the middle of a save leaves its temporary behind; the next
//! save of the same target removes it, and the target keeps its last complete content.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CHILD: &str = "KILN_TEST_SLOW_SAVE_TARGET";

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(kiln_tensor::fs::TEMP_SUFFIX))
        .collect()
}

#[test]
fn a_killed_writer_leaves_no_temporary_after_the_next_save() {
    if let Ok(target) = std::env::var(CHILD) {
        // The child: start a save that never finishes, with 4 MB already on disk.
        let _ = kiln_tensor::fs::write_atomic(&target, |w| {
            w.write_all(&vec![0xAB; 4 << 20])?;
            w.flush()?;
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        unreachable!("the slow save never returns");
    }
    let dir = std::env::temp_dir().join(format!("kiln-atomic-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let target = dir.join("model.bin");
    kiln_tensor::fs::write_atomic(&target, |w| w.write_all(b"good model")).unwrap();

    for round in 0..2 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_killed_writer_leaves_no_temporary_after_the_next_save", "--nocapture"])
            .env(CHILD, &target)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            let full =
                temporaries(&dir).iter().any(|p| std::fs::metadata(p).map(|m| m.len() >= 4 << 20).unwrap_or(false));
            if full {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the child never wrote its temporary");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        assert_eq!(temporaries(&dir).len(), 1, "round {round}: the killed writer left its temporary");
        assert_eq!(std::fs::read(&target).unwrap(), b"good model", "the target was touched");
    }
    // Round 1's writer removed round 0's temporary when it started (one left after each
    // round, not two); the next complete save removes the last one.
    kiln_tensor::fs::write_atomic(&target, |w| w.write_all(b"next model")).unwrap();
    assert!(temporaries(&dir).is_empty(), "temporaries left: {:?}", temporaries(&dir));
    assert_eq!(std::fs::read(&target).unwrap(), b"next model");
    let _ = std::fs::remove_dir_all(&dir);
}
