//! The bytes one run's tool calls may hold on the host: a budget of
//! `MCP_BRIDGE_TOOL_BYTES_IN_FLIGHT` permits (a byte each), and a JSON
//! parser that charges what it builds as it builds it.
//!
//! Owns the accounting only: a call's raw bytes until they are parsed, its
//! parsed arguments until the server has them, an answer's frame until the
//! sandbox has read it. A parse charges each allocation of the value it
//! builds (a JSON array of small numbers takes ~40 times its text once
//! parsed), so every parse in progress, however many run at once, stays
//! within what the budget has free, and one that would go past it stops
//! there (with serde_json's `preserve_order`, a `Value` is 72 bytes: 900 KB
//! of `[0, 0, …]` parse into 38 MB). It knows nothing of servers or sandboxes.

use std::fmt;
use std::sync::Arc;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits are taken from the budget this many bytes at a time while parsing.
const CHUNK: usize = 64 * 1024;
const VALUE: usize = std::mem::size_of::<Value>();
/// What a map entry costs besides its key's bytes and its value's own
/// allocations: the value, the key's `String`, the index's hash and slot.
const ENTRY: usize = VALUE + std::mem::size_of::<String>() + 2 * std::mem::size_of::<usize>();

/// Parsed arguments (none for `null`) and what they hold of the budget.
pub type Parsed = (Option<Map<String, Value>>, Hold);

/// One run's budget.
#[derive(Debug, Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    bytes: usize,
}

/// Bytes taken from a [`Budget`], given back when dropped.
#[derive(Debug, Default)]
pub struct Hold(Option<OwnedSemaphorePermit>);

impl Budget {
    pub fn new(bytes: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))),
            bytes,
        }
    }

    /// The budget's size.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `bytes` now, or nothing (None) when they are not free.
    pub fn take(&self, bytes: usize) -> Option<Hold> {
        if bytes == 0 {
            return Some(Hold(None));
        }
        let permits = u32::try_from(bytes).ok()?;
        self.permits
            .clone()
            .try_acquire_many_owned(permits)
            .ok()
            .map(|permit| Hold(Some(permit)))
    }

    /// Parses a JSON object (or null), taking from the budget what the
    /// parsed value holds as it is built. `Err(None)`: the budget ran out;
    /// `Err(Some(reason))`: not a JSON object.
    pub fn parse_object(&self, json: &[u8]) -> Result<Parsed, Option<String>> {
        let mut meter = Meter {
            budget: self,
            hold: Hold(None),
            unclaimed: 0,
            ran_out: false,
        };
        let parsed = {
            let mut deserializer = serde_json::Deserializer::from_slice(json);
            let value = Metered(&mut meter).deserialize(&mut deserializer);
            value.and_then(|value| deserializer.end().map(|()| value))
        };
        match parsed {
            Err(_) if meter.ran_out => Err(None),
            Err(error) => Err(Some(format!("malformed call arguments: {error}"))),
            Ok(Value::Null) => Ok((None, meter.hold)),
            Ok(Value::Object(map)) => Ok((Some(map), meter.hold)),
            Ok(_) => Err(Some("malformed call arguments: not an object".into())),
        }
    }
}

impl Hold {
    /// The permits, for a frame that holds them until it is written.
    pub fn into_permit(self) -> Option<OwnedSemaphorePermit> {
        self.0
    }

    fn add(&mut self, more: Hold) {
        match (&mut self.0, more.0) {
            (Some(held), Some(more)) => held.merge(more),
            (held @ None, more) => *held = more,
            (_, None) => {}
        }
    }
}

/// Charges a parse's allocations to the budget, a chunk of permits at a time.
struct Meter<'a> {
    budget: &'a Budget,
    hold: Hold,
    /// Bytes held but not yet spent by the parse.
    unclaimed: usize,
    ran_out: bool,
}

impl Meter<'_> {
    fn charge<E: serde::de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        if bytes <= self.unclaimed {
            self.unclaimed -= bytes;
            return Ok(());
        }
        let needed = bytes - self.unclaimed;
        // A chunk at a time, or what is needed when less than a chunk is free.
        let taken = [needed.max(CHUNK), needed]
            .into_iter()
            .find_map(|wanted| Some((wanted, self.budget.take(wanted)?)));
        match taken {
            Some((wanted, more)) => {
                self.hold.add(more);
                self.unclaimed = self.unclaimed + wanted - bytes;
                Ok(())
            }
            None => {
                self.ran_out = true;
                Err(E::custom("over the run's tool-call budget"))
            }
        }
    }
}

/// `serde_json::Value`'s own deserialization, with every allocation charged.
struct Metered<'m, 'a>(&'m mut Meter<'a>);

impl<'de> DeserializeSeed<'de> for Metered<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Metered<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.0.charge(v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items: Vec<Value> = Vec::new();
        loop {
            if items.len() == items.capacity() {
                // The push that grows the vector doubles it (at least 4).
                let grown = (items.capacity() * 2).max(4);
                self.0.charge((grown - items.capacity()) * VALUE)?;
                items.reserve_exact(grown - items.len());
            }
            match seq.next_element_seed(Metered(&mut *self.0))? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            self.0.charge(ENTRY + key.len())?;
            let value = access.next_value_seed(Metered(&mut *self.0))?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(budget: &Budget) -> usize {
        budget.bytes() - budget.permits.available_permits()
    }

    #[test]
    fn a_parse_holds_what_it_built_and_gives_it_back() {
        let budget = Budget::new(64 << 20);
        let text = format!(r#"{{"pad": [{}0], "name": "x"}}"#, "0,".repeat(100_000));
        let (map, hold) = budget.parse_object(text.as_bytes()).unwrap();
        let map = map.unwrap();
        assert_eq!(map["pad"].as_array().unwrap().len(), 100_001);
        // An array of small numbers takes far more than its text parsed.
        assert!(held(&budget) >= 100_001 * VALUE, "{}", held(&budget));
        drop(hold);
        assert_eq!(held(&budget), 0);
        let (none, _) = budget.parse_object(b"null").unwrap();
        assert!(none.is_none());
        assert!(matches!(budget.parse_object(b"[1]"), Err(Some(_))));
        assert!(matches!(budget.parse_object(br#"{"a": "#), Err(Some(_))));
    }

    #[test]
    fn a_parse_stops_where_the_budget_ends_and_holds_nothing_after() {
        let budget = Budget::new(1 << 20);
        let text = format!(r#"{{"pad": [{}0]}}"#, "0,".repeat(100_000));
        assert!(text.len() < 1 << 20, "the text itself fits");
        let kept = budget.take(1000).unwrap();
        assert!(matches!(budget.parse_object(text.as_bytes()), Err(None)));
        assert_eq!(held(&budget), 1000, "the failed parse gave back its bytes");
        drop(kept);
        assert!(budget.take(1 << 20).is_some(), "all of it free again");
        assert!(budget.take((1 << 20) + 1).is_none());
    }
}
