"""Builds KPL aggregated records with a reference encoder: PyPI `aws-kinesis-agg`.

Install (repo-local venv, found by the tests at .venv/bin/python or env KB_PYTHON):
    python3 -m venv .venv && .venv/bin/pip install aws-kinesis-agg==1.2.3 six

stdin:  JSON list of aggregates, each a list of [partition_key, data] (data: UTF-8 text).
stdout: JSON list of hex strings, the data of one aggregated Kinesis record each.
"""

import json
import sys

import aws_kinesis_agg.aggregator as agg


def main() -> None:
    out = []
    for users in json.load(sys.stdin):
        record = agg.AggRecord()
        for partition_key, data in users:
            if not record.add_user_record(partition_key, data.encode()):
                sys.exit("user records do not fit into one aggregated record")
        _partition_key, _explicit_hash_key, body = record.get_contents()
        out.append(body.hex())
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
