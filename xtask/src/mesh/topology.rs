//! Random connected topologies that respect a peer cap.

use std::collections::HashSet;

use anyhow::bail;
use rand::Rng;
use rand::seq::{IndexedRandom as _, SliceRandom as _};

/// Random candidates tried for an extra link before all nodes are scanned.
const RANDOM_DRAWS: usize = 32;

/// Undirected links `(a, b)` with `a < b` between `n` nodes: a random
/// spanning tree (so the mesh is connected), then random extra links until
/// each node has `degree` links, never giving a node more than `max_peers`.
///
/// A node may end with more than `degree` links (others chose it), never
/// with more than `max_peers`, and with fewer than `degree` only when no
/// node under the cap is left to link to.
///
/// # Errors
/// When no connected topology fits: `max_peers < 2` with more than two
/// nodes.
pub(crate) fn random_topology(
    n: usize,
    max_peers: usize,
    degree: usize,
    rng: &mut impl Rng,
) -> anyhow::Result<Vec<(usize, usize)>> {
    if n > 2 && max_peers < 2 || n == 2 && max_peers < 1 {
        bail!("{n} nodes cannot be connected with max_peers {max_peers}");
    }
    // Memory and time linear in the links, not quadratic in the nodes, so
    // that 10,000-node meshes are built in well under a second.
    let mut adj: HashSet<(usize, usize)> = HashSet::new();
    let mut deg = vec![0usize; n];
    let mut edges = Vec::new();
    let key = |a: usize, b: usize| (a.min(b), a.max(b));
    let mut link = |a: usize, b: usize, adj: &mut HashSet<(usize, usize)>, deg: &mut Vec<usize>| {
        adj.insert(key(a, b));
        deg[a] += 1;
        deg[b] += 1;
        edges.push(key(a, b));
    };
    // Spanning tree: each node, in random order, links to a random earlier
    // node under the cap. One always exists: k tree nodes have 2(k-1)
    // link ends, fewer than 2k, so some node has fewer than 2 ≤ max_peers.
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    // Tree nodes under the cap.
    let mut open: Vec<usize> = Vec::with_capacity(n);
    if let Some(&first) = order.first() {
        open.push(first);
    }
    for i in 1..n {
        if open.is_empty() {
            bail!(
                "no node under max_peers {max_peers} to attach node {}",
                order[i]
            );
        }
        let k = rng.random_range(0..open.len());
        let parent = open[k];
        link(order[i], parent, &mut adj, &mut deg);
        if deg[parent] >= max_peers {
            open.swap_remove(k);
        }
        if deg[order[i]] < max_peers {
            open.push(order[i]);
        }
    }
    // Extra links up to `degree`, both ends under the cap: a few random
    // draws first, then (when they all miss) a draw among every node
    // that fits, so that a node ends below `degree` only when none does.
    let want = degree.min(max_peers);
    let fits = |u: usize, v: usize, adj: &HashSet<(usize, usize)>, deg: &[usize]| {
        v != u && deg[v] < max_peers && !adj.contains(&key(u, v))
    };
    order.shuffle(rng);
    for &u in &order {
        while deg[u] < want {
            let drawn = (0..RANDOM_DRAWS)
                .map(|_| rng.random_range(0..n))
                .find(|&v| fits(u, v, &adj, &deg));
            let v = match drawn {
                Some(v) => v,
                None => {
                    let open: Vec<usize> = (0..n).filter(|&v| fits(u, v, &adj, &deg)).collect();
                    let Some(&v) = open.choose(rng) else { break };
                    v
                }
            };
            link(u, v, &mut adj, &mut deg);
        }
    }
    edges.sort_unstable();
    Ok(edges)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::SmallRng;

    use super::*;

    fn connected(n: usize, edges: &[(usize, usize)]) -> bool {
        let mut adj = vec![Vec::new(); n];
        for &(a, b) in edges {
            adj[a].push(b);
            adj[b].push(a);
        }
        let mut seen = vec![false; n];
        let mut stack = vec![0];
        seen[0] = true;
        while let Some(u) = stack.pop() {
            for &v in &adj[u] {
                if !seen[v] {
                    seen[v] = true;
                    stack.push(v);
                }
            }
        }
        seen.into_iter().all(|s| s)
    }

    #[test]
    fn topologies_are_connected_simple_and_capped() {
        for seed in 0..30 {
            let mut rng = SmallRng::seed_from_u64(seed);
            for (n, cap, degree) in [
                (2, 2, 3),
                (3, 2, 3),
                (10, 8, 3),
                (50, 4, 6),
                (100, 8, 3),
                (40, 2, 5),
                (20, 30, 25),
            ] {
                let edges = random_topology(n, cap, degree, &mut rng).unwrap();
                assert!(connected(n, &edges), "n={n} cap={cap} seed={seed}");
                let mut deg = vec![0; n];
                let mut set = HashSet::new();
                for &(a, b) in &edges {
                    assert!(a < b && b < n);
                    assert!(set.insert((a, b)), "duplicate link {a}-{b}");
                    deg[a] += 1;
                    deg[b] += 1;
                }
                assert!(deg.iter().all(|&d| d <= cap), "cap {cap}: {deg:?}");
                // Nodes below the wanted degree only when every other node
                // they could link to is full or already linked.
                let want = degree.min(cap).min(n - 1);
                for u in 0..n {
                    if deg[u] < want {
                        let open = (0..n)
                            .filter(|&v| v != u && !set.contains(&(u.min(v), u.max(v))))
                            .any(|v| deg[v] < cap);
                        assert!(!open, "node {u} could have more links");
                    }
                }
            }
        }
    }

    #[test]
    fn ten_thousand_nodes_are_quick() {
        let t = std::time::Instant::now();
        let edges = random_topology(10_000, 8, 3, &mut SmallRng::seed_from_u64(3)).unwrap();
        assert!(connected(10_000, &edges));
        assert!(edges.len() >= 10_000 * 3 / 2);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn same_seed_same_topology_and_impossible_caps_fail() {
        let a = random_topology(30, 5, 3, &mut SmallRng::seed_from_u64(7)).unwrap();
        let b = random_topology(30, 5, 3, &mut SmallRng::seed_from_u64(7)).unwrap();
        assert_eq!(a, b);
        assert!(random_topology(3, 1, 1, &mut SmallRng::seed_from_u64(1)).is_err());
        assert_eq!(
            random_topology(2, 1, 1, &mut SmallRng::seed_from_u64(1)).unwrap(),
            vec![(0, 1)]
        );
    }
}
