//! The KCL MultiLangDaemon samples, unmodified, consuming kinesalite through a real
//! Kinesis Butler server and `kinesis-butler-multilang`.
//!
//! Needs kinesalite on 127.0.0.1:4620, the server binary
//! (`cargo build -p kinesis-butler --bin kinesis-butler`), python3 and node; the samples
//! are installed by `scripts/kcl-samples.sh` (called from here, idempotent).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use common::*;

#[derive(Clone, Copy, Debug)]
enum Sample {
    Kclpy,
    AwsKcl,
}

struct SampleRun {
    workdir: PathBuf,
    env: Vec<(String, String)>,
    executable: &'static str,
}

fn sample(which: Sample, log_dir: &std::path::Path) -> SampleRun {
    match which {
        Sample::Kclpy => {
            let (dir, pythonpath) = kclpy();
            SampleRun {
                workdir: dir,
                env: vec![("PYTHONPATH".into(), pythonpath.display().to_string())],
                executable: "python3 sample_kclpy_app.py",
            }
        }
        Sample::AwsKcl => {
            std::fs::create_dir_all(log_dir).expect("log dir");
            SampleRun {
                workdir: aws_kcl(),
                env: vec![("NODE_LOG_DIR".into(), log_dir.display().to_string())],
                executable: "node sample_kcl_app.js",
            }
        }
    }
}

fn run_sample(
    dir: &std::path::Path,
    name: &str,
    which: Sample,
    props: &std::path::Path,
    endpoint: &str,
) -> Result<Proc> {
    let run = sample(which, &dir.join(name));
    let env: Vec<(&str, &str)> = run.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    start_runner(dir, name, props, endpoint, &run.workdir, &env)
}

fn seen(which: Sample, dir: &std::path::Path, name: &str, runner: &Proc) -> BTreeMap<String, Vec<String>> {
    match which {
        Sample::Kclpy => kclpy_seen(runner),
        Sample::AwsKcl => aws_kcl_seen(&dir.join(name)),
    }
}

fn covers(seen: &BTreeMap<String, Vec<String>>, puts: &BTreeMap<String, Vec<String>>) -> bool {
    puts.iter().all(|(shard, seqs)| seqs.iter().all(|s| seen.get(shard).is_some_and(|got| got.contains(s))))
}

/// Every record put is seen by the sample in order per shard, its checkpoints reach the
/// store, SIGTERM ends with shutdownRequested and a final checkpoint, and a second run
/// resumes right after them.
async fn sample_reads_checkpoints_and_resumes(which: Sample) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let kinesis = kinesis_client();
    let stream = unique("ml-sample");
    create_stream(&kinesis, &stream, 2).await?;
    let (_server, endpoint) = start_server(dir, &[]).await?;
    let app = unique("app");
    let run = sample(which, dir);
    let props = properties(
        dir,
        "app.properties",
        &format!(
            "# {which:?} sample\nexecutableName = {}\nstreamName = {stream}\napplicationName = {app}\n\
             initialPositionInStream = TRIM_HORIZON\nregionName = us-east-1\nprocessingLanguage = test\n",
            run.executable
        ),
    );

    let first = put_records(&kinesis, &stream, 0, 100).await?;
    let mut runner = run_sample(dir, "run1", which, &props, &endpoint)?;
    // Both samples checkpoint their first batch at once (aws-kcl every batch).
    wait_checkpointed(60, &endpoint, &app, &stream, &first).await?;
    eventually(20, "every record seen", || async { Ok(covers(&seen(which, dir, "run1", &runner), &first)) }).await?;
    assert!(runner.terminate(30).await?, "the runner exits 0 on SIGTERM:\n{}", runner.log_text());
    let seen1 = seen(which, dir, "run1", &runner);
    assert_all_seen(&seen1, &first);
    assert_in_order(&seen1);
    for (shard, seqs) in &seen1 {
        assert_eq!(seqs.len(), first[shard].len(), "shard {shard}: each record seen once");
    }
    wait_checkpointed(10, &endpoint, &app, &stream, &first).await?;
    let stops =
        runner.events().into_iter().filter(|e| e["message"] == "shard stopped; telling its record processor").count();
    assert_eq!(stops, 2, "each shard's processor was told to shut down");

    // A restart resumes after the checkpoints: only the new records are seen.
    let second = put_records(&kinesis, &stream, 100, 60).await?;
    let mut runner = run_sample(dir, "run2", which, &props, &endpoint)?;
    wait_checkpointed(60, &endpoint, &app, &stream, &second).await?;
    eventually(20, "every new record seen", || async { Ok(covers(&seen(which, dir, "run2", &runner), &second)) })
        .await?;
    assert!(runner.terminate(30).await?, "the runner exits 0 on SIGTERM:\n{}", runner.log_text());
    let seen2 = seen(which, dir, "run2", &runner);
    assert_in_order(&seen2);
    for (shard, seqs) in &seen2 {
        assert!(seqs.iter().all(|s| !first[shard].contains(s)), "shard {shard}: an old record was delivered again");
        assert_eq!(seqs.len(), second[shard].len(), "shard {shard}: each new record seen once");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kclpy_sample_reads_in_order_checkpoints_and_resumes() -> Result<()> {
    sample_reads_checkpoints_and_resumes(Sample::Kclpy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kcl_sample_reads_in_order_checkpoints_and_resumes() -> Result<()> {
    sample_reads_checkpoints_and_resumes(Sample::AwsKcl).await
}

fn started(runner: &Proc) -> Vec<(String, u64)> {
    runner
        .events()
        .into_iter()
        .filter(|e| e["message"] == "record processor started")
        .map(|e| (e["shard"].as_str().unwrap_or_default().to_owned(), e["pid"].as_u64().unwrap_or_default()))
        .collect()
}

fn failed_shards(runner: &Proc) -> Vec<String> {
    runner
        .events()
        .into_iter()
        .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with("record processor failed")))
        .map(|e| e["shard"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn shard_counts(endpoint: &str, app: &str, stream: &str) -> Result<Vec<u32>> {
    let mut counts: Vec<u32> = leases(endpoint, app, stream).await?.sessions.iter().map(|s| s.shard_count).collect();
    counts.sort();
    Ok(counts)
}

/// Two runners split the shards; a SIGKILLed child restarts only its shard and loses
/// nothing; stopping a runner hands its shards over with shutdownRequested and a final
/// checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_split_shards_and_hand_over_and_a_killed_child_loses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let kinesis = kinesis_client();
    let stream = unique("ml-two");
    create_stream(&kinesis, &stream, 4).await?;
    let (_server, endpoint) = start_server(dir, &[]).await?;
    let app = unique("app");
    let props = properties(
        dir,
        "app.properties",
        &format!("executableName = python3 sample_kclpy_app.py\nstreamName = {stream}\napplicationName = {app}\ninitialPositionInStream = TRIM_HORIZON\n"),
    );
    let mut a = run_sample(dir, "a", Sample::Kclpy, &props, &endpoint)?;
    eventually(30, "runner a holds every shard", || async { Ok(shard_counts(&endpoint, &app, &stream).await? == [4]) })
        .await?;
    let mut b = run_sample(dir, "b", Sample::Kclpy, &props, &endpoint)?;
    eventually(30, "the runners split the shards", || async {
        Ok(shard_counts(&endpoint, &app, &stream).await? == [2, 2])
    })
    .await?;
    let mut all = put_records(&kinesis, &stream, 0, 200).await?;
    wait_checkpointed(60, &endpoint, &app, &stream, &all).await?;

    // Kill one of a's children while records flow to it.
    // a holds the shards b did not start children for.
    let b_started: Vec<String> = started(&b).into_iter().map(|(s, _)| s).collect();
    let target = started(&a).into_iter().rev().find(|(shard, _)| !b_started.contains(shard));
    let (victim_shard, victim_pid) = target.expect("a child of runner a");
    let producer = {
        let kinesis = kinesis.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            let mut puts = BTreeMap::<String, Vec<String>>::new();
            for round in 0..8 {
                for (shard, seqs) in put_records(&kinesis, &stream, 1000 + round * 25, 25).await? {
                    puts.entry(shard).or_default().extend(seqs);
                }
                // Pacing of the producer (records keep arriving around the kill).
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok::<_, anyhow::Error>(puts)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    signal(victim_pid as u32, "KILL");
    for (shard, seqs) in producer.await?? {
        all.entry(shard).or_default().extend(seqs);
    }
    eventually(30, "the killed child's shard is restarted", || async {
        Ok(started(&a).iter().filter(|(s, _)| *s == victim_shard).count() >= 2)
    })
    .await?;

    // Stop b: its children get shutdownRequested and checkpoint; a takes their shards.
    let b_shards: Vec<String> = started(&b).into_iter().map(|(s, _)| s).collect();
    assert!(b.terminate(30).await?, "runner b exits 0 on SIGTERM:\n{}", b.log_text());
    let b_stderr: String = b.events().iter().filter_map(|e| e["stderr"].as_str().map(String::from)).collect();
    assert_eq!(b_stderr.matches("Shutdown has been requested, checkpointing.").count(), b_shards.len(), "{b_stderr}");
    let seen_b = kclpy_seen(&b);
    let stored = checkpoints(&endpoint, &app, &stream).await?;
    for shard in &b_shards {
        let last = seen_b.get(shard).and_then(|s| s.iter().max_by(|x, y| seq_cmp(x, y)));
        assert_eq!(stored.get(shard), last, "shard {shard}: b's final checkpoint is the last record it saw");
    }
    eventually(30, "runner a holds every shard again", || async {
        Ok(shard_counts(&endpoint, &app, &stream).await? == [4])
    })
    .await?;

    for (shard, seqs) in put_records(&kinesis, &stream, 5000, 100).await? {
        all.entry(shard).or_default().extend(seqs);
    }
    eventually(60, "every record seen by a or b", || async {
        let mut union = kclpy_seen(&a);
        for (shard, seqs) in kclpy_seen(&b) {
            union.entry(shard).or_default().extend(seqs);
        }
        Ok(covers(&union, &all))
    })
    .await?;
    assert!(a.terminate(30).await?, "runner a exits 0 on SIGTERM:\n{}", a.log_text());
    wait_checkpointed(10, &endpoint, &app, &stream, &all).await?;
    let failed = failed_shards(&a);
    assert!(
        !failed.is_empty() && failed.iter().all(|s| *s == victim_shard),
        "only the killed shard failed: {failed:?}"
    );
    assert!(failed_shards(&b).is_empty());
    Ok(())
}

/// A child that writes garbage, one that exits 1 and one that never answers: each shard
/// recovers on its own, the others keep flowing, and the errors name the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_children_recover_per_shard_while_the_others_flow() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let kinesis = kinesis_client();
    let stream = unique("ml-faults");
    create_stream(&kinesis, &stream, 4).await?;
    let (_server, endpoint) = start_server(dir, &[]).await?;
    let app = unique("app");
    let wrapper = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faults/faulty_kclpy.sh");
    let props = properties(
        dir,
        "app.properties",
        &format!(
            "executableName = sh {}\nstreamName = {stream}\napplicationName = {app}\n\
             initialPositionInStream = TRIM_HORIZON\ntimeoutInSeconds = 10\n",
            wrapper.display()
        ),
    );
    let puts = put_records(&kinesis, &stream, 0, 200).await?;
    let shards: Vec<String> = puts.keys().cloned().collect();
    assert_eq!(shards.len(), 4, "200 records reach every shard");
    let (exit, hang, garbage, healthy) = (&shards[0], &shards[1], &shards[2], &shards[3]);
    let fault_dir = dir.join("faults");
    std::fs::create_dir_all(&fault_dir)?;
    let (samples_dir, pythonpath) = kclpy();
    let fault_dir_s = fault_dir.display().to_string();
    let pythonpath_s = pythonpath.display().to_string();
    let env = [
        ("PYTHONPATH", pythonpath_s.as_str()),
        ("FAULT_DIR", fault_dir_s.as_str()),
        ("FAULT_EXIT_SHARD", exit.as_str()),
        ("FAULT_HANG_SHARD", hang.as_str()),
        ("FAULT_GARBAGE_SHARD", garbage.as_str()),
    ];
    let mut runner = start_runner(dir, "runner", &props, &endpoint, &samples_dir, &env)?;

    // The healthy shards are checkpointed while the hung child still holds its shard.
    eventually(30, "the healthy shards are checkpointed", || async {
        let stored = checkpoints(&endpoint, &app, &stream).await?;
        Ok([garbage, healthy, exit].iter().all(|s| stored.get(*s) == puts[*s].last()))
    })
    .await?;
    let stored = checkpoints(&endpoint, &app, &stream).await?;
    assert_ne!(
        stored.get(hang),
        puts[hang].last(),
        "the hung shard cannot be done yet (timeoutInSeconds = 10):\n{}",
        runner.log_text()
    );

    wait_checkpointed(60, &endpoint, &app, &stream, &puts).await?;
    eventually(20, "every record seen", || async { Ok(covers(&kclpy_seen(&runner), &puts)) }).await?;
    assert!(runner.terminate(30).await?, "the runner exits 0 on SIGTERM:\n{}", runner.log_text());
    assert_in_order(&kclpy_seen(&runner));

    let events = runner.events();
    let mut failed = failed_shards(&runner);
    failed.sort();
    failed.dedup();
    let mut expected = vec![exit.clone(), hang.clone()];
    expected.sort();
    assert_eq!(failed, expected, "exactly the exiting and the hung shard failed");
    let error_of = |shard: &str| {
        events
            .iter()
            .filter(|e| {
                e["shard"] == shard && e["message"].as_str().is_some_and(|m| m.starts_with("record processor failed"))
            })
            .filter_map(|e| e["error"].as_str().map(String::from))
            .collect::<Vec<_>>()
    };
    assert!(error_of(exit).iter().any(|e| e.contains("exited")), "{:?}", error_of(exit));
    assert!(error_of(hang).iter().any(|e| e.contains("timeoutInSeconds")), "{:?}", error_of(hang));
    assert!(
        events.iter().any(|e| e["shard"] == garbage.as_str()
            && e["message"].as_str().is_some_and(|m| m.contains("not a protocol message"))
            && e["line"].as_str().is_some_and(|l| l.contains("garbage"))),
        "the garbage line is logged with its shard"
    );
    let starts = started(&runner);
    for shard in [garbage, healthy] {
        assert_eq!(starts.iter().filter(|(s, _)| s == shard).count(), 1, "shard {shard} was never restarted");
    }
    Ok(())
}

/// A split parent: the aws-kcl sample gets shardEnded and checkpoints SHARD_END, then the
/// children's processors read the new records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_parent_gets_shard_ended_then_its_children_are_read() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let kinesis = kinesis_client();
    let stream = unique("ml-split");
    create_stream(&kinesis, &stream, 1).await?;
    let (_server, endpoint) = start_server(dir, &["--shard-sync-interval", "500ms"]).await?;
    let app = unique("app");
    let run = sample(Sample::AwsKcl, dir);
    let props = properties(
        dir,
        "app.properties",
        &format!(
            "executableName = {}\nstreamName = {stream}\napplicationName = {app}\ninitialPositionInStream = TRIM_HORIZON\n",
            run.executable
        ),
    );
    let before = put_records(&kinesis, &stream, 0, 50).await?;
    let parent = before.keys().next().expect("one shard").clone();
    let mut runner = run_sample(dir, "run", Sample::AwsKcl, &props, &endpoint)?;
    wait_checkpointed(60, &endpoint, &app, &stream, &before).await?;

    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&parent)
        .new_starting_hash_key("170141183460469231731687303715884105728")
        .send()
        .await?;
    eventually(30, "stream to become ACTIVE after the split", || async {
        let d = kinesis.describe_stream_summary().stream_name(&stream).send().await?;
        Ok(d.stream_description_summary().map(|s| s.stream_status().as_str() == "ACTIVE").unwrap_or(false))
    })
    .await?;
    let after = put_records(&kinesis, &stream, 50, 100).await?;
    assert!(!after.contains_key(&parent), "new records go to the children");
    wait_checkpointed(90, &endpoint, &app, &stream, &after).await?;
    let stored = checkpoints(&endpoint, &app, &stream).await?;
    assert_eq!(stored.get(&parent).map(String::as_str), Some("SHARD_END"));
    assert!(runner.terminate(30).await?, "the runner exits 0 on SIGTERM:\n{}", runner.log_text());
    let log = std::fs::read_to_string(dir.join("run/application.log"))?;
    assert!(log.contains(&format!("ShardId: {parent} has ended. Will checkpoint now.")), "{log}");
    let mut all = before.clone();
    all.extend(after.clone());
    let seen = aws_kcl_seen(&dir.join("run"));
    assert_all_seen(&seen, &all);
    assert_in_order(&seen);
    Ok(())
}
