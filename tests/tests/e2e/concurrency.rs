//! Admin commands while `serve` works: several rate-limited uploads into one data dir
//! while other processes run every admin command in a loop. None may fail with "database
//! is locked" (SQLite's busy errors), and every version still exports byte for byte.

use super::*;
use hotate_tests::harness::admin_json;

/// What SQLite's busy and locked errors say, in any command's output.
fn says_locked(output: &str) -> bool {
    let lower = output.to_lowercase();
    lower.contains("database is locked") || lower.contains("busy") && lower.contains("sqlite")
}

#[test]
fn admin_commands_never_find_the_database_locked_while_uploads_run() {
    let loops: usize = std::env::var("HOTATE_ADMIN_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let s = setup(8 << 20, 30);
    let data = s.site.data.clone();
    // Two more disks, each with a terminal updating it.
    let mut terminals = vec![(
        s.terminal.clone(),
        s.pair.updated.clone(),
        "win10".to_owned(),
    )];
    for (i, name) in ["lab-a", "lab-b"].iter().enumerate() {
        let dir = s.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        let pair = images::synthetic_pair(&dir, 8 << 20, 20, 31 + i as u64);
        let imported = admin_json(&data, &["disk", "import", name, path_str(&pair.base)]);
        let terminal = Terminal::new(
            &dir,
            &format!("PC-10{i}"),
            imported["disk_id"].as_str().expect("disk_id"),
            imported["version"].as_str().expect("version"),
            &pair.updated,
        );
        terminals.push((terminal, pair.updated.clone(), (*name).to_owned()));
    }
    // A disk with an old version to delete, and one kept reserved to abort.
    admin_ok(&data, &["disk", "import", "spare", path_str(&s.pair.base)]);
    for (terminal, ..) in &terminals {
        assert_ok(&terminal.run(&["--url", &s.server.url(), "update", "start"]));
    }
    let uploads: Vec<_> = terminals
        .iter()
        .map(|(terminal, ..)| {
            terminal
                .client(&["update", "finish", "--limit-rate", "1m"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("finish")
        })
        .collect();

    let mut runs = 0;
    for round in 0..loops {
        let imported = format!("extra-{round}");
        let user = format!("user{round}");
        let commands: Vec<Vec<&str>> = vec![
            vec![
                "--json",
                "disk",
                "import",
                &imported,
                path_str(&s.pair.base),
            ],
            vec!["--json", "disk", "versions", "win10"],
            vec!["--json", "disk", "list"],
            vec!["--json", "update", "list"],
            vec!["update", "abort", "spare"],
            vec!["user", "add", &user],
            vec!["--json", "store", "stats"],
            vec!["--json", "store", "gc"],
            vec!["--json", "store", "verify"],
            vec!["version", "delete", &imported, "00000000"],
        ];
        for args in &commands {
            let out = admin(&data, args);
            runs += 1;
            let said = text(&out);
            assert!(!says_locked(&said), "hotate-server {args:?}: {said}");
            // Refusals (nothing to abort, no such version) are answers, not failures of
            // the database; everything else must succeed.
            let refused = said.contains("no update") || said.contains("unknown version");
            assert!(
                out.status.success() || refused,
                "hotate-server {args:?}: {said}"
            );
        }
    }
    for (mut upload, (_, image, disk)) in uploads.into_iter().zip(&terminals) {
        let status = upload.wait().expect("finish");
        let mut said = String::new();
        if let Some(mut err) = upload.stderr.take() {
            std::io::Read::read_to_string(&mut err, &mut said).expect("stderr");
        }
        assert!(status.success(), "finish of {disk} failed: {said}");
        assert!(!says_locked(&said), "finish of {disk}: {said}");
        let exported = s
            .site
            .export(disk, None, &s.dir.path().join(format!("{disk}.out")));
        same_file(&exported, image);
    }
    eprintln!("{runs} admin commands while 3 uploads ran, none found the database locked");
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
