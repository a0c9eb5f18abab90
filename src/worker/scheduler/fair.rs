//! One lane's queue, fair between tenants: each tenant has its own FIFO and tenants are
//! served in turn by smooth weighted round robin (nginx's: a tenant of weight 3 gets three
//! turns in four against one of weight 1, spread out rather than in a row). A burst of
//! one tenant cannot starve another's trickle among what the worker holds; requests
//! without a tenant are one more tenant.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A tenant's name, `None` for requests without one.
pub(crate) type TenantKey = Option<Arc<str>>;

/// Weight of each tenant by name; unlisted tenants weigh 1.
pub(crate) type Weights = Arc<HashMap<String, u32>>;

#[derive(Debug)]
struct TenantQueue<E> {
    items: VecDeque<E>,
    weight: i64,
    /// Smooth weighted round robin's running credit.
    current: i64,
}

/// FIFOs per tenant, popped in weighted turns.
#[derive(Debug)]
pub(crate) struct FairQueue<E> {
    /// Tenants with items, in the order they arrived (for a stable tie-break).
    active: Vec<TenantKey>,
    queues: HashMap<TenantKey, TenantQueue<E>>,
    weights: Weights,
    len: usize,
}

impl<E> FairQueue<E> {
    pub fn new(weights: Weights) -> Self {
        Self {
            active: Vec::new(),
            queues: HashMap::new(),
            weights,
            len: 0,
        }
    }

    pub fn push_back(&mut self, tenant: TenantKey, item: E) {
        self.queue(tenant).items.push_back(item);
        self.len += 1;
    }

    /// Puts `item` first in its tenant's queue (it was next before it was set aside).
    pub(crate) fn push_front(&mut self, tenant: TenantKey, item: E) {
        self.queue(tenant).items.push_front(item);
        self.len += 1;
    }

    /// The first item of the tenant whose turn it is.
    pub fn pop(&mut self) -> Option<E> {
        let total: i64 = self.active.iter().map(|t| self.queues[t].weight).sum();
        let mut best: Option<(usize, i64)> = None;
        for (i, tenant) in self.active.iter().enumerate() {
            let queue = self
                .queues
                .get_mut(tenant)
                .expect("active tenants have queues");
            queue.current += queue.weight;
            if best.is_none_or(|(_, current)| queue.current > current) {
                best = Some((i, queue.current));
            }
        }
        let (index, _) = best?;
        let tenant = self.active[index].clone();
        let queue = self
            .queues
            .get_mut(&tenant)
            .expect("active tenants have queues");
        queue.current -= total;
        let item = queue.items.pop_front();
        if queue.items.is_empty() {
            self.queues.remove(&tenant);
            self.active.remove(index);
        }
        self.len -= usize::from(item.is_some());
        item
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn queue(&mut self, tenant: TenantKey) -> &mut TenantQueue<E> {
        if !self.queues.contains_key(&tenant) {
            let weight = tenant
                .as_deref()
                .and_then(|name| self.weights.get(name).copied())
                .unwrap_or(1)
                .max(1);
            self.active.push(tenant.clone());
            self.queues.insert(
                tenant.clone(),
                TenantQueue {
                    items: VecDeque::new(),
                    weight: i64::from(weight),
                    current: 0,
                },
            );
        }
        self.queues.get_mut(&tenant).expect("inserted above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> TenantKey {
        Some(name.into())
    }

    #[test]
    fn a_burst_does_not_starve_a_trickle() {
        let mut q = FairQueue::new(Weights::default());
        for i in 0..1000 {
            q.push_back(key("a"), ("a", i));
        }
        q.push_back(key("b"), ("b", 0));
        q.push_back(None, ("none", 0));
        let first: Vec<&str> = (0..3).map(|_| q.pop().unwrap().0).collect();
        assert_eq!(first, ["a", "b", "none"], "each tenant in turn");
        assert_eq!(q.len, 999);
        assert!((0..999).all(|_| q.pop().unwrap().0 == "a"));
        assert!(q.pop().is_none() && q.is_empty());
    }

    #[test]
    fn weights_set_the_shares_spread_out() {
        let weights: Weights = Arc::new(HashMap::from([("gold".to_string(), 3)]));
        let mut q = FairQueue::new(weights);
        for i in 0..100 {
            q.push_back(key("gold"), ("gold", i));
            q.push_back(key("std"), ("std", i));
        }
        let order: Vec<&str> = (0..8).map(|_| q.pop().unwrap().0).collect();
        assert_eq!(
            order.iter().filter(|t| **t == "gold").count(),
            6,
            "{order:?}"
        );
        assert_ne!(
            &order[..3],
            ["gold", "gold", "gold"],
            "spread, not in a row: {order:?}"
        );
    }

    #[test]
    fn each_tenant_keeps_its_own_order_and_a_front_push_goes_first() {
        let mut q = FairQueue::new(Weights::default());
        q.push_back(key("a"), 1);
        q.push_back(key("a"), 2);
        q.push_front(key("a"), 0);
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(0), Some(1), Some(2)));
    }
}
