//! One worker's share of a limit that a group of workers holds together: the limit is
//! divided by demand (max-min fair: nobody gets more than it can use while another wants
//! more), and a worker only takes what the others have given up, so the permits of the
//! whole group never add up to more than the limit, even while their views disagree.

use std::time::Duration;

/// Another member of the group, as its last state record described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    /// Stable identity, for tie-breaks every member resolves the same way.
    pub key: String,
    /// Calls in flight plus messages buffered, waiting for a permit.
    pub demand: usize,
    /// What it may use now: the larger of its permits and its calls in flight (permits
    /// given up are only free once the calls holding them finish).
    pub held: usize,
    /// Its calls at the backend when it last said.
    pub in_flight: usize,
}

/// This worker's view of its group, set by the group-pacing task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupShare {
    /// This worker's key and demand.
    pub key: String,
    pub demand: usize,
    /// Every other live member.
    pub others: Vec<Member>,
    /// How long a record takes from one member to the others through the control topic
    /// (this worker's own, written and read back; smoothed).
    pub echo: Duration,
}

impl GroupShare {
    /// This worker's place among the busy members, by key (0: first). Members take turns
    /// in this order for what one member does for the whole group.
    pub fn turn(&self) -> usize {
        self.others
            .iter()
            .filter(|m| m.demand > 0 && m.key < self.key)
            .count()
    }

    /// Permits of the others, in use or not.
    pub(crate) fn others_held(&self) -> usize {
        self.others.iter().map(|m| m.held).sum()
    }

    /// The others' calls at the backend now, under `limit`, when this worker has
    /// `in_flight` of its own: with those, the level at which a call of this worker reaches
    /// the backend, which the controller's cuts are measured against. Reports are up to a
    /// publish interval old, too old while the limit ramps up, so a member is reckoned to
    /// fill its share of the current limit (as far as its demand goes) as far as this
    /// worker fills its own: they pace the same increase on the same schedule. What a
    /// member last reported in flight is a floor.
    pub(crate) fn others_in_flight(&self, limit: usize, in_flight: usize) -> usize {
        let shares = self.allocation(limit);
        let mine = shares[self.others.len()];
        let fill = in_flight as f64 / mine.max(in_flight).max(1) as f64;
        self.others
            .iter()
            .zip(&shares)
            .map(|(m, share)| {
                let sending = ((*share).min(m.demand) as f64 * fill).round() as usize;
                sending.max(m.in_flight)
            })
            .sum()
    }

    /// This worker's permits under `limit`: its fair share by demand, but never more than
    /// what the others leave free.
    pub fn permits(&self, limit: usize) -> usize {
        self.fair_share(limit)
            .min(limit.saturating_sub(self.others_held()))
    }

    /// This worker's part of [`Self::allocation`].
    pub(crate) fn fair_share(&self, limit: usize) -> usize {
        self.allocation(limit)[self.others.len()]
    }

    /// Max-min fair division of `limit` by demand, then what nobody asked for split
    /// evenly: the others' parts in their order, then this worker's. Every member
    /// computes the same division from the same records; the units a level division
    /// leaves over go by key, not by demand: busy members' demands move all the time, and
    /// two members that each saw its own as the larger took the same unit (their permits
    /// added up to more than the limit).
    fn allocation(&self, limit: usize) -> Vec<usize> {
        let mut members: Vec<(usize, &str, usize)> = self
            .others
            .iter()
            .enumerate()
            .map(|(index, m)| (m.demand, m.key.as_str(), index))
            .chain(std::iter::once((
                self.demand,
                self.key.as_str(),
                self.others.len(),
            )))
            .collect();
        let count = members.len();
        let mut parts = vec![0; count];
        members.sort_unstable();
        let mut remaining = limit;
        for (rank, (demand, _, index)) in members.iter().enumerate() {
            let given = (*demand).min(remaining / (count - rank));
            parts[*index] = given;
            remaining -= given;
            if given < *demand {
                // Everyone from here wants more than the level: all get the level.
                let level = given;
                for (_, _, index) in &members[rank + 1..] {
                    parts[*index] = level;
                    remaining -= level;
                }
                break;
            }
        }
        members.sort_unstable_by(|a, b| a.1.cmp(b.1));
        // The units left over from the level: one each to the members that want more.
        for (demand, _, index) in &members {
            if remaining > 0 && parts[*index] < *demand {
                parts[*index] += 1;
                remaining -= 1;
            }
        }
        // What nobody asked for: evenly, the remainder to the first keys.
        for (rank, (_, _, index)) in members.iter().enumerate() {
            parts[*index] += remaining / count + usize::from(rank < remaining % count);
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(demand: usize, others: &[(&str, usize, usize)]) -> GroupShare {
        GroupShare {
            key: "me".into(),
            demand,
            others: others
                .iter()
                .map(|(key, demand, held)| Member {
                    key: key.to_string(),
                    demand: *demand,
                    held: *held,
                    in_flight: *held,
                })
                .collect(),
            echo: Duration::ZERO,
        }
    }

    /// Every member's fair share, as each computes it for itself.
    fn all_shares(limit: usize, demands: &[(&str, usize)]) -> Vec<usize> {
        demands
            .iter()
            .map(|(key, demand)| {
                GroupShare {
                    key: key.to_string(),
                    demand: *demand,
                    others: demands
                        .iter()
                        .filter(|(k, _)| k != key)
                        .map(|(k, d)| Member {
                            key: k.to_string(),
                            demand: *d,
                            held: 0,
                            in_flight: 0,
                        })
                        .collect(),
                    echo: Duration::ZERO,
                }
                .fair_share(limit)
            })
            .collect()
    }

    #[test]
    fn busy_members_split_evenly_and_the_shares_add_up_to_the_limit() {
        for limit in [1, 7, 16, 17, 48, 255] {
            for n in 1..=5 {
                let keys: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
                let demands: Vec<(&str, usize)> = keys.iter().map(|k| (k.as_str(), 1000)).collect();
                let shares = all_shares(limit, &demands);
                assert_eq!(shares.iter().sum::<usize>(), limit, "{limit} over {n}");
                let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(hi - lo <= 1, "{limit} over {n}: {shares:?}");
            }
        }
    }

    #[test]
    fn a_member_that_wants_little_gets_what_it_wants_and_the_rest_goes_to_the_busy_one() {
        let shares = all_shares(16, &[("a", 3), ("b", 100)]);
        assert_eq!(shares, vec![3, 13]);
        let shares = all_shares(16, &[("a", 0), ("b", 100), ("c", 100)]);
        assert_eq!(shares, vec![0, 8, 8]);
    }

    #[test]
    fn what_nobody_asked_for_is_split_evenly() {
        let shares = all_shares(20, &[("a", 2), ("b", 4)]);
        assert_eq!(shares.iter().sum::<usize>(), 20);
        assert_eq!(shares, vec![9, 11]);
        assert_eq!(all_shares(5, &[("a", 0), ("b", 0)]), vec![3, 2]);
    }

    #[test]
    fn permits_never_take_what_the_others_still_hold() {
        // The other member still holds 12 (calls in flight) although its share is 8.
        let share = group(100, &[("other", 100, 12)]);
        assert_eq!(share.fair_share(16), 8);
        assert_eq!(share.permits(16), 4);
        // Once it is down to its share, this one gets its own.
        let share = group(100, &[("other", 100, 8)]);
        assert_eq!(share.permits(16), 8);
        // The others hold more than the limit (it was just cut): nothing for now.
        let share = group(100, &[("other", 100, 20)]);
        assert_eq!(share.permits(16), 0);
    }

    #[test]
    fn two_busy_members_that_each_see_their_own_demand_as_the_larger_share_the_limit() {
        // The group's limit rose from 16 to 17; each member still holds its 8, and each
        // last heard of the other's demand when it was lower than its own now.
        let a = GroupShare {
            key: "a".into(),
            demand: 72,
            others: vec![Member {
                key: "b".into(),
                demand: 70,
                held: 8,
                in_flight: 8,
            }],
            echo: Duration::ZERO,
        };
        let b = GroupShare {
            key: "b".into(),
            demand: 72,
            others: vec![Member {
                key: "a".into(),
                demand: 70,
                held: 8,
                in_flight: 8,
            }],
            echo: Duration::ZERO,
        };
        assert_eq!(a.permits(17) + b.permits(17), 17);
        assert_eq!(
            (a.permits(17), b.permits(17)),
            (9, 8),
            "the unit goes by key"
        );
    }

    #[test]
    fn busy_members_take_turns_by_key() {
        assert_eq!(group(5, &[]).turn(), 0, "alone");
        assert_eq!(group(5, &[("other", 5, 8)]).turn(), 0, "me < other");
        assert_eq!(group(5, &[("alpha", 5, 8), ("beta", 5, 8)]).turn(), 2);
        assert_eq!(
            group(5, &[("alpha", 0, 0), ("beta", 5, 8)]).turn(),
            1,
            "an idle member has no turn"
        );
    }

    #[test]
    fn alone_a_member_has_the_whole_limit() {
        assert_eq!(group(0, &[]).permits(16), 16);
        assert_eq!(group(100, &[]).permits(16), 16);
    }
}
