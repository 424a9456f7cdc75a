//! How many connections one source may hold at once (`--max-connections-per-ip` of the relay,
//! `--max-http-connections-per-ip` of signaling): a count per source key, taken with
//! [`SourceLimit::try_take`] and given back when the [`SourceSlot`] drops. The caller chooses
//! the key (an IPv4 address, an IPv6 /64). Only sources holding a slot are in the table, so it
//! never has more entries than there are slots out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The counts per source and their limit.
#[derive(Debug)]
pub struct SourceLimit {
    held: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

impl SourceLimit {
    /// At most `max` slots per source.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            held: Mutex::new(HashMap::new()),
            max,
        })
    }

    fn held(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for `key`, or `None` when it holds `max` already.
    pub fn try_take(self: &Arc<Self>, key: IpAddr) -> Option<SourceSlot> {
        let mut held = self.held();
        let count = held.entry(key).or_insert(0);
        if *count >= self.max {
            if *count == 0 {
                held.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            limit: Arc::clone(self),
            key,
            counted: true,
        })
    }

    fn give_back(&self, key: IpAddr) {
        let mut held = self.held();
        if let Some(count) = held.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&key);
            }
        }
    }

    /// Sources holding at least one slot.
    pub fn sources(&self) -> usize {
        self.held().len()
    }
}

/// One slot of a source; dropping it gives the slot back.
#[derive(Debug)]
pub struct SourceSlot {
    limit: Arc<SourceLimit>,
    key: IpAddr,
    /// False while suspended.
    counted: bool,
}

impl SourceSlot {
    /// Gives the slot back for now, keeping the right to [`Self::resume`] it.
    pub fn suspend(&mut self) {
        if std::mem::replace(&mut self.counted, false) {
            self.limit.give_back(self.key);
        }
    }

    /// Counts the slot again, even when its source holds its share meanwhile (a connection
    /// coming back to the count it left): the source's next `try_take` is then refused until
    /// it gives some back.
    pub fn resume(&mut self) {
        if !std::mem::replace(&mut self.counted, true) {
            *self.limit.held().entry(self.key).or_insert(0) += 1;
        }
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.suspend();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_holds_at_most_its_share_and_leaves_no_entry_behind() {
        let limit = SourceLimit::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = limit.try_take(a).expect("a, first");
        let a2 = limit.try_take(a).expect("a, second");
        assert!(limit.try_take(a).is_none(), "a holds its share");
        let b1 = limit.try_take(b).expect("b is not affected");
        drop(a1);
        let a3 = limit.try_take(a).expect("a's slot was given back");
        assert_eq!(limit.sources(), 2);
        drop((a2, a3, b1));
        assert_eq!(limit.sources(), 0);
        assert!(SourceLimit::new(0).try_take(a).is_none());
        assert_eq!(limit.sources(), 0, "a refusal leaves no entry");
        // Suspended, a slot leaves the count; resumed, it counts again even over the share, and
        // the next try is refused until one is given back.
        let (x, mut y) = (limit.try_take(a).unwrap(), limit.try_take(a).unwrap());
        y.suspend();
        let z = limit.try_take(a).expect("y's place");
        y.resume();
        assert!(limit.try_take(a).is_none());
        drop(x);
        assert!(
            limit.try_take(a).is_none(),
            "z + the resumed y: at the share"
        );
        drop((y, z));
        assert_eq!(limit.sources(), 0);
        assert!(limit.try_take(a).is_some());
    }
}
