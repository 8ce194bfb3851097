//! Random connected topologies that respect a peer cap.

use anyhow::bail;
use rand::Rng;
use rand::seq::{IndexedRandom as _, SliceRandom as _};

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
    let mut adj = vec![vec![false; n]; n];
    let mut deg = vec![0usize; n];
    let mut edges = Vec::new();
    let mut link = |a: usize, b: usize, adj: &mut Vec<Vec<bool>>, deg: &mut Vec<usize>| {
        adj[a][b] = true;
        adj[b][a] = true;
        deg[a] += 1;
        deg[b] += 1;
        edges.push((a.min(b), a.max(b)));
    };
    // Spanning tree: each node, in random order, links to a random earlier
    // node under the cap. One always exists: k tree nodes have 2(k-1)
    // link ends, fewer than 2k, so some node has fewer than 2 ≤ max_peers.
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    for i in 1..n {
        let open: Vec<usize> = order[..i]
            .iter()
            .copied()
            .filter(|&v| deg[v] < max_peers)
            .collect();
        let Some(&parent) = open.choose(rng) else {
            bail!(
                "no node under max_peers {max_peers} to attach node {}",
                order[i]
            );
        };
        link(order[i], parent, &mut adj, &mut deg);
    }
    // Extra links up to `degree`, both ends under the cap.
    let want = degree.min(max_peers);
    order.shuffle(rng);
    for &u in &order {
        while deg[u] < want {
            let open: Vec<usize> = (0..n)
                .filter(|&v| v != u && !adj[u][v] && deg[v] < max_peers)
                .collect();
            let Some(&v) = open.choose(rng) else { break };
            link(u, v, &mut adj, &mut deg);
        }
    }
    edges.sort_unstable();
    Ok(edges)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

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
