//! The watch picks up every way a top-level file is published (rename, an
//! editor's temp-file-and-rename, a write in place, a half-finished write, a
//! storm of renames) while an established connection keeps streaming.

mod common;
mod watch_support;

use common::*;
use watch_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mv_of_a_new_file_over_the_config() {
    let (site, mut s, [_, b, _]) = site_serving_a("30s").await;
    let new = site.write("incoming/stayup.yaml", s.config_for("b", "30s"));
    let ok = std::process::Command::new("mv")
        .arg(&new)
        .arg(&site.config)
        .status()
        .expect("run mv")
        .success();
    assert!(ok, "mv failed");
    let line = s.expect_watch_commit(2, &b, site.client()).await;
    assert!(line.contains("certificate-swapped"), "{line}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sed_in_place_edit_is_a_temp_file_and_rename() {
    let (site, mut s, [_, b, _]) = site_serving_a("30s").await;
    // GNU sed -i writes a temporary file in the same folder and renames it
    // over the original.
    let ok = std::process::Command::new("sed")
        .arg("-i")
        .arg("s#certs/a\\.#certs/b.#g")
        .arg(&site.config)
        .status()
        .expect("run sed")
        .success();
    assert!(ok, "sed failed");
    s.expect_watch_commit(2, &b, site.client()).await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_in_place_is_picked_up() {
    let (site, mut s, [_, b, _]) = site_serving_a("30s").await;
    write_in_place(&site.config, s.config_for("b", "30s").as_bytes());
    s.expect_watch_commit(2, &b, site.client()).await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_write_in_place_never_commits() {
    use std::io::Write;
    let (site, mut s, [a, b, _]) = site_serving_a("30s").await;
    let full = s.config_for("b", "30s");
    // Cut inside the quoted backend address: the first part alone is not
    // valid YAML.
    let cut = full.find("backend: \"").expect("backend line") + 14;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&site.config)
        .expect("open config");
    f.write_all(&full.as_bytes()[..cut])
        .expect("write first part");
    f.flush().expect("flush");

    // The writer pauses (longer than the debounce, which is what this waits
    // for): the half-written file is read and rejected, the old generation
    // keeps serving.
    s.expect_reload("rejected", "watch", 1, &a, site.client())
        .await;
    s.streamer.advance(8 * 1024).await;

    f.write_all(&full.as_bytes()[cut..])
        .expect("write the rest");
    drop(f);
    let line = s.expect_watch_commit(2, &b, site.client()).await;
    assert!(
        line.contains(&format!("source={}", sha_hex(full.as_bytes()))),
        "{line}"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_content_renamed_into_place_makes_no_generation() {
    let (site, mut s, [a, _, _]) = site_serving_a("30s").await;
    let same = std::fs::read_to_string(&site.config).expect("read config");
    site.publish(&same);
    // Logged at debug for watch-triggered reloads.
    s.expect_reload("unchanged", "watch", 1, &a, site.client())
        .await;
    // An explicit reload afterwards is unchanged too: still generation 1.
    let line = s.d.reload().await;
    assert!(
        line.contains("reload unchanged") && line.contains("trigger=signal"),
        "{line}"
    );
    assert_eq!(generation_of(&line), 1, "{line}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_renames_in_a_second_commit_a_few_generations_ending_with_the_last() {
    let (site, mut s, [_, _, c]) = site_serving_a("30s").await;
    let configs: Vec<String> = (0..100)
        .map(|i| {
            let cert = match i {
                99 => "c",
                i if i % 2 == 0 => "b",
                _ => "a",
            };
            format!("# publication {i}\n{}", s.config_for(cert, "30s"))
        })
        .collect();
    let last = configs[99].clone();
    let dir = site.path("");
    let target = site.config.clone();
    let storm = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let mut last = started;
        let mut pauses = 0;
        for (i, yaml) in configs.iter().enumerate() {
            let tmp = dir.join(format!(".storm-{i}.tmp"));
            std::fs::write(&tmp, yaml).expect("write");
            std::fs::rename(&tmp, &target).expect("rename");
            // A machine too loaded to keep the pace may give the watch a
            // quiet period mid-storm, which may then legitimately commit.
            if last.elapsed() >= std::time::Duration::from_millis(100) {
                pauses += 1;
            }
            last = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        (started.elapsed(), pauses)
    });
    let (took, pauses) = tokio::task::spawn_blocking(move || storm.join().expect("storm thread"))
        .await
        .expect("join");
    eprintln!("100 renames in {took:?}, {pauses} pause(s) of 100 ms or more");

    // Wait for the commit of the final content.
    let final_source = format!("source={}", sha_hex(last.as_bytes()));
    let line = s.d.wait_for(&final_source).await;
    assert!(line.contains("reload committed"), "{line}");
    let committed: Vec<String> =
        s.d.output()
            .lines()
            .filter(|l| l.contains("reload committed") && l.contains("trigger=watch"))
            .map(str::to_string)
            .collect();
    assert!(
        !committed.is_empty() && committed.len() <= 2 + pauses,
        "{} generations for one storm with {pauses} pause(s):\n{}",
        committed.len(),
        committed.join("\n")
    );
    assert_eq!(
        fingerprint_at(s.bind, "localhost", site.client()).await,
        c.fingerprint()
    );
    s.finish().await;
}
