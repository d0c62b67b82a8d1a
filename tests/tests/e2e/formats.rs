//! Differential disks in other formats than raw: a qcow2 overlay on the terminal, and
//! qcow2, VHDX and VHD images imported by the server, checked against the raw image.

use std::path::PathBuf;
use std::process::Command;

use hotate_tests::harness::admin_json;

use super::*;

fn qemu(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed (qemu-utils): {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", text(&out));
}

/// What libvhdi (`python3-libvhdi`), a reader independent of ours, reads of the VHD or
/// VHDX image `child` with `parent` set; `None` (said) on a machine without it.
fn libvhdi_read(child: &Path, parent: &Path) -> Option<Vec<u8>> {
    let found = Command::new("/usr/bin/python3")
        .args(["-c", "import pyvhdi"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !hotate_tests::needs(
        "the VHD/VHDX tests",
        "libvhdi (Debian python3-libvhdi)",
        found,
    ) {
        return None;
    }
    let script = format!(
        "import pyvhdi, sys\n\
         child = pyvhdi.file(); child.open({child:?})\n\
         parent = pyvhdi.file(); parent.open({parent:?})\n\
         child.set_parent(parent)\n\
         sys.stdout.buffer.write(child.read_buffer_at_offset(child.media_size, 0))\n",
        child = child.to_str().expect("path"),
        parent = parent.to_str().expect("path"),
    );
    let read = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("python3 with python3-libvhdi");
    assert!(read.status.success(), "libvhdi: {}", text(&read));
    Some(read.stdout)
}

fn as_raw(image: &Path, out: &Path) -> Vec<u8> {
    qemu(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            image.to_str().expect("path"),
            out.to_str().expect("path"),
        ],
    );
    std::fs::read(out).expect("raw")
}

/// A qcow2 overlay `name` in `dir` on the raw image `backing` (named relative to it), with
/// qemu-io's `writes` applied.
fn qcow2_overlay(dir: &Path, name: &str, backing: &str, writes: &[String]) -> PathBuf {
    let overlay = dir.join(name);
    let path = overlay.to_str().expect("path");
    qemu(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", path,
        ],
    );
    let mut args: Vec<&str> = writes.iter().flat_map(|c| ["-c", c.as_str()]).collect();
    args.push(path);
    qemu("qemu-io", &args);
    overlay
}

/// How many versions the test disk has.
fn version_count(s: &Setup) -> Option<usize> {
    admin_json(&s.site.data, &["disk", "versions", "win10"])
        .as_array()
        .map(Vec::len)
}

#[test]
fn a_qcow2_overlay_on_the_terminal_uploads_what_qemu_reads() {
    let s = setup(8 << 20, 41);
    let mut writes: Vec<String> = [65536u64, 1 << 20, 3_000_000, 7 << 20]
        .iter()
        .enumerate()
        .map(|(i, offset)| format!("write -P {} {offset} 20k", 0x30 + i))
        .collect();
    writes.push("write -z 2M 128k".to_owned());
    let overlay = qcow2_overlay(s.dir.path(), "overlay.qcow2", "base.img", &writes);
    let expected = as_raw(&overlay, &s.dir.path().join("expected.raw"));

    for format in ["qcow2", "auto"] {
        let latest = admin_json(&s.site.data, &["disk", "list"])[0]["latest_version"]
            .as_str()
            .expect("latest")
            .to_owned();
        let t = Terminal::new(
            s.dir.path(),
            &format!("PC-{format}"),
            &s.site.disk_id,
            &latest,
            &overlay,
        );
        t.set_format(format, Some(&s.pair.base));
        // `bench` reads what a finish would: the spans around the overlay's seven
        // clusters, not the whole disk.
        let url = s.server.url();
        assert_ok(&t.run(&["--url", &url, "update", "start"]));
        let bench = t.run(&["bench", "--json", "--link-seconds", "0.5"]);
        assert_ok(&bench);
        let report: serde_json::Value = serde_json::from_slice(&bench.stdout).expect("json");
        // (The second round boots the version the first one made: nothing changed.)
        let changed = if format == "qcow2" { 7 } else { 0 };
        assert_eq!(report["blocks_changed"], changed, "{report}");
        let read = report["bytes_to_read"].as_u64().expect("bytes_to_read");
        assert!(read < 8 << 20, "{report}");
        let finished = t.run(&["update", "finish"]);
        assert_ok(&finished);
        // Only the seven 64 KiB clusters the overlay maps are read.
        assert!(
            text(&finished)
                .contains("Reading only the overlay's changes: 0.5 MB of the 8.4 MB disk."),
            "{}",
            text(&finished)
        );
        // Progress counts the overlay's data (0.5 MB), as the manual does, not the disk.
        let totals: Vec<String> = String::from_utf8_lossy(&finished.stdout)
            .lines()
            .filter(|l| l.contains("% complete... ("))
            .filter_map(|l| Some(l.split_once(" / ")?.1.split_once(" MB)")?.0.to_owned()))
            .collect();
        assert!(
            !totals.is_empty() && totals.iter().all(|t| t == "0"),
            "{totals:?}\n{}",
            text(&finished)
        );
        let exported = s
            .site
            .export("win10", None, &s.dir.path().join("latest.img"));
        assert!(
            exported == expected,
            "{format}: the version differs from the overlay"
        );
    }
}

#[test]
fn disk_import_reads_qcow2_vhdx_and_vhd_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = images::synthetic_pair(dir.path(), 6 << 20, 20, 42);
    let site = Site::new(dir.path(), "win10", &pair.base, BLOCK);
    for (name, extra) in [
        ("plain", vec!["-O", "qcow2"]),
        ("packed", vec!["-O", "qcow2", "-c"]),
        ("hyperv", vec!["-O", "vhdx", "-o", "block_size=1M"]),
        (
            "virtualpc",
            vec!["-O", "vpc", "-o", "subformat=dynamic,force_size=on"],
        ),
    ] {
        let image = dir.path().join(format!("{name}.img"));
        let mut args = vec!["convert"];
        args.extend(extra);
        args.extend([
            pair.updated.to_str().expect("path"),
            image.to_str().expect("path"),
        ]);
        qemu("qemu-img", &args);
        admin_ok(
            &site.data,
            &[
                "disk",
                "import",
                name,
                image.to_str().expect("path"),
                "--block-size",
                &BLOCK.to_string(),
            ],
        );
        let exported = site.export(name, None, &dir.path().join(format!("{name}.raw")));
        same_file(&exported, &pair.updated);
    }
}

#[test]
fn an_overlay_over_another_image_than_the_booted_version_is_refused() {
    let s = setup(4 << 20, 43);
    // The overlay sits on the updated image, not on the base the terminal booted.
    let overlay = qcow2_overlay(
        s.dir.path(),
        "astray.qcow2",
        "updated.img",
        &["write -P 7 0 4k".to_owned()],
    );
    let t = s.site.terminal(s.dir.path(), "PC-009", &overlay);
    t.set_format("auto", None);
    let url = s.server.url();
    assert_ok(&t.run(&["--url", &url, "update", "start"]));
    let bench = t.run(&["bench", "--link-seconds", "0.5"]);
    assert_eq!(bench.status.code(), Some(2), "{}", text(&bench));
    assert!(
        text(&bench).contains("does not sit on version"),
        "{}",
        text(&bench)
    );
    let refused = t.run(&["update", "finish"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains(&format!("does not sit on version {}", s.site.first_version)),
        "{}",
        text(&refused)
    );
    assert_eq!(version_count(&s), Some(1));
}

#[test]
fn a_vhdx_differencing_disk_on_the_terminal_uploads_only_its_changes() {
    let s = setup(8 << 20, 44);
    // The booted version as a dynamic VHDX, and the terminal's writes in a child of it.
    let parent = s.dir.path().join("base.vhdx");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-O",
            "vhdx",
            "-o",
            "block_size=1M",
            s.pair.base.to_str().expect("path"),
            parent.to_str().expect("path"),
        ],
    );
    let changes = vec![
        (3 << 20, vec![0x5a; 1 << 20]),
        ((6 << 20) + 8192, vec![0xa5; 4096]),
    ];
    let child = s.dir.path().join("terminal.vhdx");
    hotate_engine::source::write_vhdx_differencing(&child, &parent, "base.vhdx", &changes)
        .expect("child");
    let mut expected = std::fs::read(&s.pair.base).expect("base");
    for (offset, bytes) in &changes {
        expected[*offset as usize..*offset as usize + bytes.len()].copy_from_slice(bytes);
    }
    let t = s.site.terminal(s.dir.path(), "PC-VHDX", &child);
    t.set_format("vhdx", None);
    assert_ok(&t.run(&["--url", &s.server.url(), "update", "start"]));
    let shown = text(&t.run(&["update", "show"]));
    assert!(
        shown.contains(&format!("Differential disk:    {} (vhdx)", child.display()))
            && shown.contains(&format!("on parent:          {}", parent.display())),
        "{shown}"
    );
    let finished = t.run(&["update", "finish"]);
    assert_ok(&finished);
    // Two 1 MiB blocks of the child are read, not the 8 MiB disk.
    assert!(
        text(&finished).contains("Reading only the overlay's changes: 2.1 MB of the 8.4 MB disk."),
        "{}",
        text(&finished)
    );
    let exported = s
        .site
        .export("win10", None, &s.dir.path().join("latest.img"));
    assert!(
        exported == expected,
        "the version differs from the differencing disk"
    );
}

/// `disk export win10` with `args`.
fn export(s: &Setup, args: &[&str]) -> std::process::Output {
    let mut all = vec!["disk", "export", "win10"];
    all.extend_from_slice(args);
    admin(&s.site.data, &all)
}

/// Two versions exported in `format`: the first whole, which QEMU (reading it as
/// `qemu_format`) finds equal to the base image; the second as a child of that export.
struct Exports {
    s: Setup,
    second: String,
    first: PathBuf,
    child: PathBuf,
}

fn export_two_versions(format: &str, qemu_format: &str, seed: u64) -> Exports {
    let s = setup(6 << 20, seed);
    s.start_update();
    let second = new_version(&s.terminal.run(&["update", "finish"]));
    let first = s
        .dir
        .path()
        .join(format!("{}.{format}", s.site.first_version));
    assert_ok(&export(
        &s,
        &[
            "--version",
            &s.site.first_version,
            "--format",
            format,
            "--output",
            first.to_str().expect("path"),
        ],
    ));
    qemu(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            qemu_format,
            "-F",
            "raw",
            first.to_str().expect("path"),
            s.pair.base.to_str().expect("path"),
        ],
    );
    let child = s.dir.path().join(format!("{second}.{format}"));
    assert_ok(&export(
        &s,
        &[
            "--version",
            &second,
            "--format",
            format,
            "--parent",
            &s.site.first_version,
            "--output",
            child.to_str().expect("path"),
        ],
    ));
    Exports {
        s,
        second,
        first,
        child,
    }
}

/// Checks that our reader and libvhdi both read the VHD or VHDX `child` of `parent` as
/// `updated`, and returns the child opened.
fn assert_reads_as_updated(
    child: &Path,
    parent: &Path,
    updated: &[u8],
) -> std::sync::Arc<dyn hotate_engine::ImageSource> {
    let image =
        hotate_engine::source::open(child, hotate_engine::Format::Auto, None).expect("open");
    let mut buf = hotate_engine::direct_io::AlignedBuf::zeroed(1);
    image.read_at(0, updated.len(), &mut buf).expect("read");
    assert!(buf[..] == updated[..], "the child reads differently here");
    if let Some(read) = libvhdi_read(child, parent) {
        assert!(read == updated, "libvhdi reads the child differently");
    }
    image
}

#[test]
fn versions_export_as_vhdx_whole_or_as_a_differencing_child_of_the_previous_one() {
    let Exports {
        s,
        second,
        first,
        child,
    } = export_two_versions("vhdx", "vhdx", 45);
    // QEMU finds nothing to repair in the whole image.
    qemu("qemu-img", &["check", "-q", first.to_str().expect("path")]);
    // The child holds only what changed.
    let updated = std::fs::read(&s.pair.updated).expect("updated");
    let image = assert_reads_as_updated(&child, &first, &updated);
    // It holds exactly the 1 MiB blocks in which the versions differ.
    let base = std::fs::read(&s.pair.base).expect("base");
    let differing: u64 = base
        .chunks(1 << 20)
        .zip(updated.chunks(1 << 20))
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.len() as u64)
        .sum();
    let held: u64 = image
        .top_layer_extents()
        .expect("a differencing image")
        .expect("extents")
        .iter()
        .map(|r| r.end - r.start)
        .sum();
    assert_eq!(held, differing);
    // A parent image that is not that version is refused; other formats say so.
    let dir = s.dir.path();
    let wrong = export(
        &s,
        &[
            "--version",
            &second,
            "--format",
            "vhdx",
            "--parent",
            &second,
            "--parent-image",
            first.to_str().expect("path"),
            "--output",
            dir.join("wrong.vhdx").to_str().expect("path"),
        ],
    );
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("differs from version"),
        "{}",
        text(&wrong)
    );
    let unknown = export(
        &s,
        &[
            "--format",
            "iso",
            "--output",
            dir.join("x.iso").to_str().expect("path"),
        ],
    );
    assert!(
        text(&unknown).contains("unknown --format"),
        "{}",
        text(&unknown)
    );
}

#[test]
fn an_overlay_whose_parent_changed_after_update_start_is_refused_until_put_back() {
    let s = setup(4 << 20, 44);
    let overlay = qcow2_overlay(
        s.dir.path(),
        "overlay.qcow2",
        "base.img",
        &["write -P 9 3M 1M".to_owned()],
    );
    let t = s.site.terminal(s.dir.path(), "PC-010", &overlay);
    t.set_format("qcow2", None);
    let started = t.run(&["--url", &s.server.url(), "update", "start"]);
    assert_ok(&started);
    assert!(
        text(&started).contains("Recorded the 1 image(s) below the overlay"),
        "{}",
        text(&started)
    );

    // The parent's last byte changes after the update started, in the last MiB that the
    // overlay writes over: sampling the layers below would not see it.
    let parent = std::fs::read(&s.pair.base).expect("base");
    let mut touched = parent.clone();
    *touched.last_mut().expect("byte") ^= 0xff;
    std::fs::write(&s.pair.base, &touched).expect("write");
    let refused = t.run(&["update", "finish"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("changed since `update start`"),
        "{}",
        text(&refused)
    );
    assert_eq!(version_count(&s), Some(1));

    // Put back, the finish goes through and the version reads as the overlay.
    std::fs::write(&s.pair.base, &parent).expect("write");
    assert_ok(&t.run(&["update", "finish"]));
    let expected = as_raw(&overlay, &s.dir.path().join("expected.raw"));
    let exported = s.site.export("win10", None, &s.dir.path().join("v2.img"));
    assert!(exported == expected, "the version differs from the overlay");
}

#[test]
fn versions_export_as_qcow2_whole_or_as_an_overlay_on_the_previous_one() {
    let Exports {
        s, first, child, ..
    } = export_two_versions("qcow2", "qcow2", 46);
    qemu("qemu-img", &["check", "-q", first.to_str().expect("path")]);
    // The overlay is sound and reads as the second version.
    qemu("qemu-img", &["check", "-q", child.to_str().expect("path")]);
    qemu(
        "qemu-img",
        &[
            "compare",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            child.to_str().expect("path"),
            s.pair.updated.to_str().expect("path"),
        ],
    );
    let info = Command::new("qemu-img")
        .args(["info", "--output=json", child.to_str().expect("path")])
        .output()
        .expect("qemu-img info");
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).expect("json");
    let first_name = first.file_name().and_then(|n| n.to_str()).expect("name");
    assert_eq!(info["backing-filename"], first_name);
    // Only the clusters of blocks that differ are in the overlay.
    let base = std::fs::read(&s.pair.base).expect("base");
    let updated = std::fs::read(&s.pair.updated).expect("updated");
    let differing = base
        .chunks(BLOCK as usize)
        .zip(updated.chunks(BLOCK as usize))
        .filter(|(a, b)| a != b)
        .count() as u64;
    let own: u64 = hotate_engine::Qcow2Image::open(&child, None)
        .expect("open")
        .mapped_extents()
        .expect("extents")
        .iter()
        .map(|r| r.end - r.start)
        .sum();
    assert_eq!(own, differing * u64::from(BLOCK));
}

#[test]
fn versions_export_as_vhd_whole_or_as_a_differencing_child_of_the_previous_one() {
    let Exports {
        s, first, child, ..
    } = export_two_versions("vhd", "vpc", 47);
    let updated = std::fs::read(&s.pair.updated).expect("updated");
    assert_reads_as_updated(&child, &first, &updated);
}
