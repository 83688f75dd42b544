//! The book in `book/` (mdBook): every `{{#include}}` names a file and an anchor that exist,
//! every chapter and picture is in place, `mdbook build` succeeds, and every internal link of
//! the generated HTML (and its `#fragment`) resolves. The book's own examples
//! (`extending_kiln`, `training_report`) run here on a short schedule.
//!
//! The include and markdown checks need nothing outside Rust. The build needs `mdbook` on the
//! `PATH` (or the `MDBOOK` environment variable naming the program; `.ci/install.d/book.sh`
//! installs it): without it that test is skipped with a message, and fails under `CI=true`.

// Each example included below has its own `mod common` (examples/common.rs), as when it is built
// alone.
#![allow(clippy::duplicate_mod)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

#[path = "../../../examples/extending_kiln.rs"]
#[allow(dead_code)]
mod extending_kiln;
#[path = "../../../examples/training_report.rs"]
#[allow(dead_code)]
mod training_report;

/// `book/` at the workspace root.
fn book_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../book")
}

/// Every file under `dir` (recursively) whose name ends with `ext`, sorted.
fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display())).path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `path` with `.` and `..` components folded away (without touching the file system).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// One `{{#include ...}}` (or `{{#rustdoc_include ...}}`) of a chapter.
#[derive(Debug, PartialEq)]
struct Include {
    /// The path as written, relative to the chapter's folder.
    path: String,
    /// What follows the path: an anchor name or a line range (`10:20`, `10:`, `:20`, `10`).
    selector: Option<String>,
    /// Line of the chapter (1-based).
    line: usize,
}

/// The includes of a chapter's text.
fn includes(text: &str) -> Vec<Include> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("{{#") {
            let after = &rest[start + 3..];
            let Some(end) = after.find("}}") else { break };
            let body = after[..end].trim();
            rest = &after[end + 2..];
            let Some((command, arg)) = body.split_once(char::is_whitespace) else { continue };
            if command != "include" && command != "rustdoc_include" {
                continue;
            }
            let arg = arg.trim();
            let (path, selector) = match arg.split_once(':') {
                Some((p, s)) => (p.to_string(), Some(s.to_string())),
                None => (arg.to_string(), None),
            };
            out.push(Include { path, selector, line: i + 1 });
        }
    }
    out
}

/// The name after `ANCHOR:` or `ANCHOR_END:` on a line, if the line holds one.
fn anchor_on(line: &str, tag: &str) -> Option<String> {
    // ("ANCHOR_END:" does not contain "ANCHOR:", so the two tags never match each other.)
    let at = line.find(tag)?;
    let name: String = line[at + tag.len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// What is wrong with one include, if anything: the file must exist, an anchor must open and
/// close in it around at least one line of code, a line range must lie inside it.
fn include_problem(chapter: &Path, inc: &Include) -> Option<String> {
    let at = format!("{}:{}", chapter.display(), inc.line);
    let file = chapter.parent().expect("a chapter is in a folder").join(&inc.path);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => return Some(format!("{at}: {{{{#include {}}}}}: cannot read {}: {e}", inc.path, file.display())),
    };
    let lines: Vec<&str> = text.lines().collect();
    let selector = inc.selector.as_deref()?;
    let is_range = selector.chars().all(|c| c.is_ascii_digit() || c == ':');
    if is_range {
        let mut parts = selector.split(':');
        let first: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(1);
        let last: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(first.max(lines.len()));
        if first == 0 || first > last || last > lines.len() {
            return Some(format!("{at}: lines {selector} of {} are outside its {} lines", inc.path, lines.len()));
        }
        return None;
    }
    let open = lines.iter().position(|l| anchor_on(l, "ANCHOR:").as_deref() == Some(selector));
    let Some(open) = open else {
        return Some(format!("{at}: {} has no `ANCHOR: {selector}` line", inc.path));
    };
    let close = lines[open + 1..].iter().position(|l| anchor_on(l, "ANCHOR_END:").as_deref() == Some(selector));
    let Some(close) = close else {
        return Some(format!("{at}: {} opens `ANCHOR: {selector}` (line {}) but never closes it", inc.path, open + 1));
    };
    let body = &lines[open + 1..open + 1 + close];
    if !body.iter().any(|l| !l.trim().is_empty() && !l.contains("ANCHOR:") && !l.contains("ANCHOR_END:")) {
        return Some(format!("{at}: anchor `{selector}` of {} holds no code", inc.path));
    }
    None
}

/// The targets of the markdown links and images of a text (`[text](target)`, `![alt](target)`),
/// outside code blocks and code spans, with their lines.
fn markdown_links(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Drop code spans, then look for `](`.
        let mut plain = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                plain.push(c);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("").to_string();
            out.push((target, i + 1));
            rest = &after[end..];
        }
    }
    out
}

/// Whether a link leaves the book (a scheme such as `https:`, or `mailto:`).
fn is_external(target: &str) -> bool {
    match target.find(':') {
        Some(colon) => !target[..colon].contains('/') && !target[..colon].contains('#'),
        None => false,
    }
}

#[test]
fn every_include_names_an_existing_file_and_anchor() {
    let src = book_dir().join("src");
    let chapters = files_with(&src, ".md");
    assert!(chapters.len() > 10, "the book has its chapters: {chapters:?}");
    let mut problems = Vec::new();
    let mut count = 0;
    for chapter in &chapters {
        let text = std::fs::read_to_string(chapter).unwrap_or_else(|e| panic!("{}: {e}", chapter.display()));
        for inc in includes(&text) {
            count += 1;
            problems.extend(include_problem(chapter, &inc));
        }
    }
    assert!(problems.is_empty(), "{} broken includes:\n{}", problems.len(), problems.join("\n"));
    assert!(count >= 30, "the listings come from included files ({count} includes)");
    eprintln!("{count} includes in {} chapters, all resolved", chapters.len());
}

#[test]
fn every_chapter_is_in_the_summary_and_every_link_and_picture_exists() {
    let src = book_dir().join("src");
    let summary = std::fs::read_to_string(src.join("SUMMARY.md")).expect("book/src/SUMMARY.md");
    let mut problems = Vec::new();
    let listed: BTreeSet<PathBuf> = markdown_links(&summary)
        .into_iter()
        .filter(|(t, _)| !t.is_empty())
        .map(|(t, line)| {
            let p = normalise(&src.join(&t));
            if !p.is_file() {
                problems.push(format!("SUMMARY.md:{line}: chapter {t} does not exist"));
            }
            p
        })
        .collect();
    let mut pictures_used = BTreeSet::new();
    for chapter in files_with(&src, ".md") {
        let name = chapter.strip_prefix(&src).expect("under src").display().to_string();
        if name != "SUMMARY.md" && !listed.contains(&normalise(&chapter)) {
            problems.push(format!("{name} is not listed in SUMMARY.md"));
        }
        let text = std::fs::read_to_string(&chapter).expect("readable");
        for (target, line) in markdown_links(&text) {
            if target.is_empty() || target.starts_with('#') || is_external(&target) {
                continue;
            }
            let path = target.split('#').next().unwrap_or("");
            let file = normalise(&chapter.parent().expect("in a folder").join(path));
            if !file.exists() {
                problems.push(format!("{name}:{line}: link to {target}: {} does not exist", file.display()));
            } else if !file.starts_with(normalise(&src)) {
                problems.push(format!("{name}:{line}: link to {target} leaves the book (the HTML would not have it)"));
            }
            pictures_used.insert(file);
        }
    }
    for picture in files_with(&src.join("img"), ".png") {
        if !pictures_used.contains(&normalise(&picture)) {
            problems.push(format!("{} is in the book but no chapter shows it", picture.display()));
        }
        let bytes = std::fs::read(&picture).expect("readable");
        if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            problems.push(format!("{} is not a PNG", picture.display()));
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

/// The `mdbook` program to run: `$MDBOOK`, else `mdbook` on the `PATH`; `None` (with the
/// reason) when it cannot be run.
fn mdbook() -> Result<(String, String), String> {
    let program = std::env::var("MDBOOK").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "mdbook".to_string());
    match Command::new(&program).arg("--version").output() {
        Ok(out) if out.status.success() => Ok((program, String::from_utf8_lossy(&out.stdout).trim().to_string())),
        Ok(out) => Err(format!("`{program} --version` failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(format!("cannot run `{program}`: {e} (install it with .ci/install.d/book.sh)")),
    }
}

/// The values of attribute `attr` (`href`, `src`, `id`) in an HTML text.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let needle = format!(" {attr}=\"");
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&needle) {
        let after = &rest[at + needle.len()..];
        let end = after.find('"').unwrap_or(after.len());
        out.push(&after[..end]);
        rest = &after[end..];
    }
    out
}

/// `%20`-style escapes decoded (the file names and ids mdBook writes use them rarely).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every broken internal link of the HTML book in `out`: a relative `href` or `src` whose
/// file is missing, or whose `#fragment` names no `id` in its page.
fn broken_links(out: &Path) -> (Vec<String>, usize) {
    let pages = files_with(out, ".html");
    let mut ids: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut texts = Vec::new();
    for page in &pages {
        let html = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        ids.insert(normalise(page), attribute_values(&html, "id").into_iter().map(str::to_string).collect());
        texts.push((page.clone(), html));
    }
    let mut problems = Vec::new();
    let mut checked = 0;
    for (page, html) in &texts {
        let name = page.strip_prefix(out).unwrap_or(page).display().to_string();
        let links = attribute_values(html, "href").into_iter().chain(attribute_values(html, "src"));
        for link in links {
            let link = link.replace("&amp;", "&");
            if link.is_empty() || link == "#" || is_external(&link) || link.starts_with("//") {
                continue;
            }
            checked += 1;
            let (path, fragment) = match link.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (link.as_str(), None),
            };
            let path = path.split('?').next().unwrap_or("");
            // A path from the site's root (404.html uses them) is resolved from the book's root.
            let mut target = if path.is_empty() {
                page.clone()
            } else if let Some(from_root) = path.strip_prefix('/') {
                normalise(&out.join(percent_decode(from_root)))
            } else {
                normalise(&page.parent().expect("in a folder").join(percent_decode(path)))
            };
            if target.is_dir() {
                target = target.join("index.html");
            }
            if !target.is_file() {
                problems.push(format!("{name}: link {link}: {} does not exist", target.display()));
                continue;
            }
            if let Some(fragment) = fragment.filter(|f| !f.is_empty()) {
                if let Some(page_ids) = ids.get(&normalise(&target)) {
                    if !page_ids.contains(&percent_decode(fragment)) {
                        problems.push(format!("{name}: link {link}: no id \"{fragment}\" in {}", target.display()));
                    }
                }
            }
        }
    }
    (problems, checked)
}

#[test]
fn the_book_builds_and_every_internal_link_resolves() {
    let (program, version) = match mdbook() {
        Ok(found) => found,
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and mdbook is missing: {why}");
            }
            eprintln!("skipped: the book is not built: {why}");
            return;
        }
    };
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("book");
    if out.exists() {
        std::fs::remove_dir_all(&out).unwrap_or_else(|e| panic!("cannot clear {}: {e}", out.display()));
    }
    let run = Command::new(&program)
        .arg("build")
        .arg(book_dir())
        .arg("--dest-dir")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let log = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{version}: `mdbook build book` failed:\n{log}");
    // mdBook reports a missing include file as an error but may still finish the build.
    assert!(!log.contains("ERROR") && !log.contains("[ERROR]"), "{version} reported errors:\n{log}");
    assert!(
        out.join("index.html").is_file() && out.join("print.html").is_file(),
        "{} has the HTML book",
        out.display()
    );
    let (problems, checked) = broken_links(&out);
    assert!(checked > 100, "the link check saw the book's links ({checked})");
    assert!(problems.is_empty(), "{} broken links:\n{}", problems.len(), problems.join("\n"));
    eprintln!("{version}: built into {}, {checked} internal links resolved", out.display());
}

#[test]
fn link_checker_finds_broken_links() {
    let dir = std::env::temp_dir().join(format!("kiln-book-linkcheck-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).expect("writable temporary folder");
    std::fs::write(dir.join("index.html"), r#"<a href="sub/page.html#there">x</a><a href="missing.html">y</a>"#)
        .expect("written");
    std::fs::write(
        dir.join("sub/page.html"),
        r##"<h1 id="here">h</h1><a href="../index.html#nowhere">z</a><img src="../a.png">"##,
    )
    .expect("written");
    let (mut problems, checked) = broken_links(&dir);
    problems.sort();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(checked, 4);
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems[0].starts_with("index.html: link missing.html"), "{problems:?}");
    assert!(problems[1].starts_with("index.html: link sub/page.html#there: no id \"there\""), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("link ../index.html#nowhere: no id \"nowhere\"")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("link ../a.png")), "{problems:?}");
}

#[test]
fn include_checker_finds_missing_anchors() {
    let dir = std::env::temp_dir().join(format!("kiln-book-includes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("writable temporary folder");
    std::fs::write(
        dir.join("code.rs"),
        "// ANCHOR: good\nfn f() {}\n// ANCHOR_END: good\n// ANCHOR: open\nfn g() {}\n",
    )
    .expect("written");
    let chapter = dir.join("chapter.md");
    let text = "{{#include code.rs:good}}\n{{#include code.rs:open}}\n{{#include code.rs:absent}}\n\
                {{#include nothing.rs}}\n{{#include code.rs:2:9}}\n{{#rustdoc_include code.rs:1:3}}\n";
    let found = includes(text);
    assert_eq!(found.len(), 6);
    assert_eq!(found[0], Include { path: "code.rs".into(), selector: Some("good".into()), line: 1 });
    let problems: Vec<Option<String>> = found.iter().map(|inc| include_problem(&chapter, inc)).collect();
    std::fs::remove_dir_all(&dir).ok();
    assert!(problems[0].is_none() && problems[5].is_none(), "{problems:?}");
    assert!(problems[1].as_deref().unwrap().contains("never closes"), "{problems:?}");
    assert!(problems[2].as_deref().unwrap().contains("no `ANCHOR: absent` line"), "{problems:?}");
    assert!(problems[3].as_deref().unwrap().contains("cannot read"), "{problems:?}");
    assert!(problems[4].as_deref().unwrap().contains("outside its 5 lines"), "{problems:?}");
}

#[test]
fn extending_kiln_example_runs() {
    let r = extending_kiln::run(&extending_kiln::Opts::smoke()).expect("the checks pass");
    assert_eq!(r.gradcheck_checked, 6, "{r:?}");
    assert!(r.state_dict_round_trip, "{r:?}");
    assert!(r.gain_change > 0.0, "the new layer's parameter was trained: {r:?}");
    assert!(r.test_accuracy > 0.8, "five epochs on the digits: {r:?}");
}

#[test]
fn training_report_example_runs() {
    let opts = training_report::Opts::smoke();
    let r = training_report::run(&opts).expect("trained and drawn");
    for png in [&r.curves_png, &r.confusion_png] {
        let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is a PNG", png.display());
    }
    std::fs::remove_dir_all(&opts.out_dir).ok();
    let total: u64 = r.confusion.iter().flatten().sum();
    assert_eq!(total, 359, "every held-out digit is counted once: {r:?}");
    assert!(r.test_accuracy > 0.8 && r.test_f1_macro > 0.7, "{r:?}");
}
