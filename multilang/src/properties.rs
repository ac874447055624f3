//! Java `.properties` files (the MultiLangDaemon's configuration) and the settings
//! Kinesis Butler takes from them.
//!
//! [`parse`] follows `java.util.Properties.load`: `key=value`, `key: value` or
//! `key value`; `#` and `!` comment lines; a line ending in an odd number of
//! backslashes continues on the next (whose leading blanks are dropped); escapes
//! `\t \n \r \f \\ \uXXXX`, and `\` before any other character is that character
//! (so `\=` and `\:` put separators into keys). A key given twice keeps its last value.

use std::collections::BTreeMap;
use std::time::Duration;

use kinesis_butler_client::StartPosition;

use crate::error::MultilangError;

/// The key/value pairs of a properties file, in key order, with the line each came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties {
    entries: BTreeMap<String, (String, usize)>,
}

impl Properties {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(|(v, _)| v.as_str())
    }

    /// Every key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The 1-based line where `key` was given.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        self.entries.get(key).map(|(_, line)| *line)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Parses the text of a `.properties` file (see the module documentation). Only a
/// malformed `\u` escape is an error.
pub fn parse(text: &str) -> Result<Properties, MultilangError> {
    let mut entries = BTreeMap::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((index, raw)) = lines.next() {
        let first = raw.trim_start_matches([' ', '\t', '\x0c']);
        if first.is_empty() || first.starts_with('#') || first.starts_with('!') {
            continue;
        }
        // Join continuation lines: an odd number of trailing backslashes.
        let mut logical = String::new();
        let mut part = first;
        loop {
            let trailing = part.bytes().rev().take_while(|&b| b == b'\\').count();
            if trailing % 2 == 1 {
                logical.push_str(&part[..part.len() - 1]);
                match lines.next() {
                    Some((_, next)) => part = next.trim_start_matches([' ', '\t', '\x0c']),
                    None => break,
                }
            } else {
                logical.push_str(part);
                break;
            }
        }
        let (key, value) = split_key_value(&logical);
        let line = index + 1;
        let key = unescape(key, line)?;
        let value = unescape(value, line)?;
        entries.insert(key, (value, line));
    }
    Ok(Properties { entries })
}

/// Splits a logical line at the first unescaped `=`, `:` or blank; blanks around the
/// separator belong to neither side.
fn split_key_value(line: &str) -> (&str, &str) {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' | b':' | b' ' | b'\t' | b'\x0c' => break,
            _ => i += 1,
        }
    }
    let i = i.min(bytes.len());
    let key = &line[..i];
    let mut rest = line[i..].trim_start_matches([' ', '\t', '\x0c']);
    if let Some(r) = rest.strip_prefix(['=', ':']) {
        rest = r.trim_start_matches([' ', '\t', '\x0c']);
    }
    (key, rest)
}

fn unescape(text: &str, line: usize) -> Result<String, MultilangError> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = (hex.len() == 4).then(|| u32::from_str_radix(&hex, 16).ok()).flatten();
                match code.and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => {
                        return Err(MultilangError::Properties(format!("line {line}: malformed \\u escape \\u{hex}")))
                    }
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Ok(out)
}

/// Keys of the MultiLangDaemon that Kinesis Butler reads.
const USED: &[&str] = &[
    "executableName",
    "streamName",
    "streamArn",
    "applicationName",
    "initialPositionInStream",
    "timeoutInSeconds",
    "maxRecords",
    "workerId",
];

/// Keys of the MultiLangDaemon that mean something to the KCL but not here: the Butler
/// server reads Kinesis, keeps the leases and balances (its own flags decide those).
const KNOWN_IGNORED: &[(&str, &str)] = &[
    ("regionName", "the Butler server reads Kinesis with its own AWS settings"),
    ("kinesisEndpoint", "the Butler server reads Kinesis with its own AWS settings"),
    ("dynamoDBEndpoint", "leases live in the Butler server's store"),
    ("AWSCredentialsProvider", "the Butler server reads Kinesis with its own credentials"),
    ("AwsCredentialsProvider", "the Butler server reads Kinesis with its own credentials"),
    ("AWSCredentialsProviderDynamoDB", "leases live in the Butler server's store"),
    ("AwsCredentialsProviderDynamoDB", "leases live in the Butler server's store"),
    ("AWSCredentialsProviderCloudWatch", "no CloudWatch metrics are published"),
    ("AwsCredentialsProviderCloudWatch", "no CloudWatch metrics are published"),
    ("processingLanguage", "only a user-agent suffix for the KCL"),
    ("failoverTimeMillis", "the Butler server's --lease-ttl decides when a crashed runner's shards move"),
    ("maxLeasesForWorker", "the Butler server balances shards evenly over all runners"),
    ("maxLeasesToStealAtOneTime", "the Butler server balances shards evenly over all runners"),
    ("callProcessRecordsEvenForEmptyRecordList", "the Butler client delivers only non-empty batches"),
    ("idleTimeBetweenReadsInMillis", "the Butler server's --idle-interval decides"),
    ("shardSyncIntervalMillis", "the Butler server's --shard-sync-interval decides"),
    ("parentShardPollIntervalMillis", "the Butler server orders parent and child shards"),
    ("cleanupLeasesUponShardCompletion", "the Butler server keeps its lease table"),
    ("taskBackoffTimeMillis", "use --restart-backoff-ms"),
    ("metricsLevel", "no CloudWatch metrics are published"),
    ("metricsBufferTimeMillis", "no CloudWatch metrics are published"),
    ("metricsMaxQueueSize", "no CloudWatch metrics are published"),
    ("validateSequenceNumberBeforeCheckpointing", "sequence numbers are checked against the records delivered"),
    ("maxActiveThreads", "each shard has its own process and task"),
    ("retrievalMode", "the Butler server's --retrieval-mode decides"),
];

/// What the runner takes from a MultiLangDaemon properties file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultilangConfig {
    /// `executableName`, split on spaces: the program and its arguments.
    pub command: Vec<String>,
    /// `streamArn` if given (as the KCL prefers it), else `streamName`.
    pub stream: String,
    /// `applicationName`: the Butler app (leases and checkpoints belong to it).
    pub app: String,
    /// `initialPositionInStream` (default `LATEST`, as in the KCL).
    pub start: StartPosition,
    /// `timeoutInSeconds`: how long a child may take to answer one message.
    pub timeout: Option<Duration>,
    /// `maxRecords`: records per batch (0: the server's default).
    pub max_records: u32,
    /// `workerId`: the client name shown by `DescribeLeases`.
    pub worker_id: Option<String>,
    /// Keys this runner does not know (warned about, not fatal).
    pub unknown_keys: Vec<String>,
    /// Keys the KCL knows that have no effect here, with why.
    pub ignored_keys: Vec<(String, &'static str)>,
}

impl MultilangConfig {
    /// Reads the settings from parsed properties; a missing or invalid required key is
    /// an error that names it.
    pub fn from_properties(props: &Properties) -> Result<Self, MultilangError> {
        let bad = |m: String| Err(MultilangError::Properties(m));
        let required = |key: &str| match props.get(key).map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err(MultilangError::Properties(format!("{key} is required"))),
        };
        let command: Vec<String> =
            required("executableName")?.split(' ').filter(|s| !s.is_empty()).map(String::from).collect();
        let stream = match (props.get("streamArn").map(str::trim), props.get("streamName").map(str::trim)) {
            (Some(arn), _) if !arn.is_empty() => arn.to_owned(),
            (_, Some(name)) if !name.is_empty() => name.to_owned(),
            _ => return bad("streamName (or streamArn) is required".into()),
        };
        let app = required("applicationName")?;
        let start = match props.get("initialPositionInStream").map(str::trim) {
            None | Some("") | Some("LATEST") => StartPosition::Latest,
            Some("TRIM_HORIZON") => StartPosition::TrimHorizon,
            Some(other) => {
                return bad(format!(
                    "initialPositionInStream must be TRIM_HORIZON or LATEST (AT_TIMESTAMP is not supported in properties files), not {other:?}"
                ))
            }
        };
        let timeout = match props.get("timeoutInSeconds").map(str::trim) {
            None | Some("") => None,
            Some(v) => match v.parse::<u64>() {
                Ok(0) => None,
                Ok(secs) => Some(Duration::from_secs(secs)),
                Err(_) => return bad(format!("timeoutInSeconds must be a whole number of seconds, not {v:?}")),
            },
        };
        let max_records = match props.get("maxRecords").map(str::trim) {
            None | Some("") => 0,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n <= 10_000 => n,
                _ => return bad(format!("maxRecords must be between 1 and 10000, not {v:?}")),
            },
        };
        let worker_id = props.get("workerId").map(str::trim).filter(|s| !s.is_empty()).map(String::from);
        let mut unknown_keys = Vec::new();
        let mut ignored_keys = Vec::new();
        for key in props.keys() {
            if USED.contains(&key) {
                continue;
            }
            match KNOWN_IGNORED.iter().find(|(k, _)| *k == key) {
                Some((k, why)) => ignored_keys.push(((*k).to_owned(), *why)),
                None => unknown_keys.push(key.to_owned()),
            }
        }
        Ok(Self { command, stream, app, start, timeout, max_records, worker_id, unknown_keys, ignored_keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_comments_and_blanks() {
        let p = parse(
            "# comment\n! also a comment\n\n  a=1\nb: 2\nc 3\nd   =   spaced value  \ne\nf=\n  # indented comment\ng=x=y\n",
        )
        .unwrap();
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), Some("2"));
        assert_eq!(p.get("c"), Some("3"));
        assert_eq!(p.get("d"), Some("spaced value  "));
        assert_eq!(p.get("e"), Some(""));
        assert_eq!(p.get("f"), Some(""));
        assert_eq!(p.get("g"), Some("x=y"));
        assert_eq!(p.len(), 7);
        assert_eq!(p.line_of("b"), Some(5));
    }

    #[test]
    fn continuations_and_escapes() {
        let p =
            parse("list = one, \\\n       two, \\\n   three\nk\\=ey\\:x = v\\tw\\n\\u00e9\\\\\nlast=end\\\\\nodd=\\\n")
                .unwrap();
        assert_eq!(p.get("list"), Some("one, two, three"));
        assert_eq!(p.get("k=ey:x"), Some("v\tw\n\u{e9}\\"));
        assert_eq!(p.get("last"), Some("end\\"), "an even number of backslashes does not continue");
        assert_eq!(p.get("odd"), Some(""), "a continuation at the end of the file ends the value");
        assert!(parse("bad=\\u12").is_err());
        assert!(parse("bad=\\uZZZZ").is_err());
    }

    #[test]
    fn windows_line_ends_and_repeated_keys() {
        let p = parse("a=1\r\nb=2\r\na=3\r\n").unwrap();
        assert_eq!(p.get("a"), Some("3"));
        assert_eq!(p.get("b"), Some("2"));
    }

    #[test]
    fn the_kclpy_sample_properties() {
        let text = "executableName = sample_kclpy_app.py\nstreamArn = arn:aws:kinesis:us-east-5:000000000000:stream/kclpysample\nstreamName = kclpysample\napplicationName = PythonKCLSample\nAwsCredentialsProvider = DefaultCredentialsProvider\nprocessingLanguage = python/3.8\ninitialPositionInStream = TRIM_HORIZON\nregionName = us-east-1\nsomethingNew = 1\n";
        let config = MultilangConfig::from_properties(&parse(text).unwrap()).unwrap();
        assert_eq!(config.command, vec!["sample_kclpy_app.py"]);
        assert_eq!(config.stream, "arn:aws:kinesis:us-east-5:000000000000:stream/kclpysample");
        assert_eq!(config.app, "PythonKCLSample");
        assert_eq!(config.start, StartPosition::TrimHorizon);
        assert_eq!(config.timeout, None);
        assert_eq!(config.unknown_keys, vec!["somethingNew"]);
        let ignored: Vec<_> = config.ignored_keys.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(ignored, vec!["AwsCredentialsProvider", "processingLanguage", "regionName"]);
    }

    #[test]
    fn settings_and_their_errors() {
        let config = |text: &str| MultilangConfig::from_properties(&parse(text).unwrap());
        let c = config("executableName = node  sample_kcl_app.js\nstreamName=s\napplicationName=a\ntimeoutInSeconds=5\nmaxRecords=100\nworkerId=w1\n").unwrap();
        assert_eq!(c.command, vec!["node", "sample_kcl_app.js"]);
        assert_eq!((c.stream.as_str(), c.app.as_str()), ("s", "a"));
        assert_eq!(c.start, StartPosition::Latest, "the KCL's default");
        assert_eq!(c.timeout, Some(Duration::from_secs(5)));
        assert_eq!((c.max_records, c.worker_id.as_deref()), (100, Some("w1")));
        for (text, names) in [
            ("streamName=s\napplicationName=a\n", "executableName"),
            ("executableName=x\napplicationName=a\n", "streamName"),
            ("executableName=x\nstreamName=s\n", "applicationName"),
            (
                "executableName=x\nstreamName=s\napplicationName=a\ninitialPositionInStream=SOON\n",
                "initialPositionInStream",
            ),
            ("executableName=x\nstreamName=s\napplicationName=a\ntimeoutInSeconds=1.5\n", "timeoutInSeconds"),
            ("executableName=x\nstreamName=s\napplicationName=a\nmaxRecords=20000\n", "maxRecords"),
        ] {
            let err = config(text).expect_err(names).to_string();
            assert!(err.contains(names), "{err}");
        }
    }
}
