//! `SmallList`: a list that keeps its first `N` items inside its owner and spills the rest to
//! the heap. Allocations usually hold one or two permissions and channels; keeping those inline
//! saves the relay path a pointer chase (a cache miss per packet with many allocations).

/// Up to `N` items inline, the rest in a `Vec` (no heap allocation until then).
#[derive(Clone, Debug)]
pub(crate) struct SmallList<T: Copy, const N: usize> {
    inline: [Option<T>; N],
    spill: Vec<T>,
}

impl<T: Copy, const N: usize> Default for SmallList<T, N> {
    fn default() -> Self {
        Self {
            inline: [None; N],
            spill: Vec::new(),
        }
    }
}

impl<T: Copy, const N: usize> SmallList<T, N> {
    /// All items (inline first).
    #[inline]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.inline.iter().flatten().chain(self.spill.iter())
    }

    /// All items, mutably.
    #[inline]
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.inline
            .iter_mut()
            .flatten()
            .chain(self.spill.iter_mut())
    }

    /// Add an item.
    pub(crate) fn push(&mut self, item: T) {
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(item),
            None => self.spill.push(item),
        }
    }

    /// Remove the first item matching `pred`.
    pub(crate) fn remove_first(&mut self, mut pred: impl FnMut(&T) -> bool) -> Option<T> {
        for slot in &mut self.inline {
            if slot.as_ref().is_some_and(&mut pred) {
                return slot.take();
            }
        }
        let i = self.spill.iter().position(pred)?;
        Some(self.spill.swap_remove(i))
    }

    /// Number of items.
    pub(crate) fn len(&self) -> usize {
        self.inline.iter().flatten().count() + self.spill.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_then_spill_then_remove() {
        let mut l: SmallList<u32, 2> = SmallList::default();
        for i in 0..5 {
            l.push(i);
        }
        assert_eq!(l.len(), 5);
        assert_eq!(l.iter().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert_eq!(l.remove_first(|x| *x == 1), Some(1));
        assert_eq!(l.remove_first(|x| *x == 3), Some(3));
        assert_eq!(l.remove_first(|x| *x == 9), None);
        l.push(7);
        assert_eq!(l.len(), 4);
        let mut all: Vec<u32> = l.iter().copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 2, 4, 7]);
        for x in l.iter_mut() {
            *x += 1;
        }
        assert!(l.iter().all(|x| *x != 0));
    }
}
