//! The index reuse of the core's two slabs (`AllocationTable`, `RelayHandles`): a released
//! index is handed out again before the slab grows, so indexes stay small.

/// The index for a new entry of `slots`: the last index released to `free`, else that of a
/// new default slot pushed onto `slots`.
pub(crate) fn reuse_or_push<T: Default>(slots: &mut Vec<T>, free: &mut Vec<u32>) -> u32 {
    free.pop().unwrap_or_else(|| {
        slots.push(T::default());
        (slots.len() - 1) as u32
    })
}
