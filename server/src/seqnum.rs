//! Kinesis sequence numbers: decimals of up to 128 bits (56 digits in practice).
//!
//! They are compared as numbers, never as strings or `u64`: "9" < "10" and a 56-digit
//! value overflows every machine integer.

use std::cmp::Ordering;
use std::fmt;

/// A validated Kinesis sequence number, kept in its decimal text form.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SequenceNumber(String);

/// The text is not a sequence number.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed sequence number {0:?}: expected 1 to 128 decimal digits")]
pub struct MalformedSequenceNumber(pub String);

impl SequenceNumber {
    /// Parses decimal text. Leading zeros are dropped so equal numbers are equal values.
    pub fn parse(text: &str) -> Result<Self, MalformedSequenceNumber> {
        if text.is_empty() || text.len() > 128 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MalformedSequenceNumber(text.to_owned()));
        }
        let trimmed = text.trim_start_matches('0');
        Ok(Self(if trimmed.is_empty() { "0".to_owned() } else { trimmed.to_owned() }))
    }

    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        // Both are normalized (no leading zeros): the longer one is larger.
        self.0.len().cmp(&other.0.len()).then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> SequenceNumber {
        SequenceNumber::parse(t).unwrap()
    }

    #[test]
    fn compares_as_numbers_not_strings() {
        assert!(s("9") < s("10"));
        assert!(s("0010") == s("10"));
        let a = "49590338271490256608559692538361571095921575989136588898";
        let b = "49590338271490256608559692538361571095921575989136588899";
        assert!(s(a) < s(b));
        assert!(s(a) > s("18446744073709551615"));
        assert_eq!(s("0").as_str(), "0");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "12a", "-1", " 1", "1.5", &"1".repeat(129)] {
            assert!(SequenceNumber::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
