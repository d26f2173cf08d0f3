package consumers

import (
	"slices"
)

// keyState is what the runtime knows about one key's records in the retry
// chain of one origin partition (ordered modes). Records are identified by
// their origin offset: every copy of a record in the chain carries it.
type keyState struct {
	// live holds the origin offsets of the key's records that are in the
	// chain and not settled, ascending; level says where each one's
	// current copy is.
	live  []int64
	level map[int64]int
	// maxO is the highest origin offset of the key that entered the chain
	// or was settled in it: an origin record of the key at or below it was
	// already processed (a replay after a crash) and is dropped.
	maxO int64
	// settled holds origin offsets whose record a dead-letter marker
	// settled: their remaining copies are dropped.
	settled map[int64]bool
	// stale counts, per origin offset, the outdated copies known to be
	// ahead in the retry partitions (left uncommitted by a crash).
	stale map[int64]int
	// waits holds, per origin offset of a record this member dead-lettered,
	// the markers it wrote that were not yet reached and the processed
	// positions of the lower chain partitions at that moment: a marker is
	// passed (and committed past) only once those are committed, so no
	// older copy of the record can outlive it.
	waits map[int64]*markerWait
	// deadMax is set by OrderedDeadLetterRest when a record of the key is
	// dead-lettered: live records up to this origin offset are
	// dead-lettered unhandled; -1 for none.
	deadMax int64
}

type markerWait struct {
	markers int
	lower   map[tp]int64
}

func newKeyState() *keyState {
	return &keyState{level: map[int64]int{}, maxO: -1, deadMax: -1}
}

func (k *keyState) head() (int64, bool) {
	if len(k.live) == 0 {
		return 0, false
	}
	return k.live[0], true
}

func (k *keyState) isLive(o int64) bool {
	_, ok := k.level[o]
	return ok
}

func (k *keyState) dead(o int64) bool { return k.deadMax >= 0 && o <= k.deadMax }

// chainState is the parking state of one origin partition: the keys that
// have records in its retry chain. It is rebuilt from the retry topics
// when the partition is assigned (loadStates) and kept up to date as
// records enter and leave the chain. Goroutines of the origin partition
// and of its retry partitions share it, under Group.mu.
type chainState struct {
	levels int
	keys   map[string]*keyState
	// stale marks copies (level, offset in the retry partition) that a
	// crash left behind: they are dropped when reached.
	stale map[staleCopy]bool
	// originNext is the origin partition's next offset to process, as far
	// as completed polls know (for sweep).
	originNext int64
}

type staleCopy struct {
	level  int
	offset int64
}

func newChainState(levels int) *chainState {
	return &chainState{levels: levels, keys: map[string]*keyState{}, stale: map[staleCopy]bool{}}
}

type route int

const (
	routeHandle route = iota // handle the record
	routePark                // forward it, unhandled, to its key's oldest record's level, behind it
	routeDead                // dead-letter it: an older record of its key was (OrderedDeadLetterRest)
	routeDrop                // drop it: a copy of a record already processed (a replay after a crash)
	routeMarker              // a dead-letter marker: nothing to handle
)

// routeOrigin decides for an origin record of key at origin offset o.
func (s *chainState) routeOrigin(key string, o int64) route {
	k := s.keys[key]
	switch {
	case k == nil:
		return routeHandle
	case o <= k.maxO:
		return routeDrop
	case len(k.live) > 0:
		return routePark
	}
	return routeHandle
}

// headLevel returns the level of the oldest record of key in the chain.
func (s *chainState) headLevel(key string) int {
	k := s.keys[key]
	if k == nil || len(k.live) == 0 {
		return 1
	}
	return k.level[k.live[0]]
}

// routeRetry decides for a copy at level (≥ 1), at offset off of the
// retry partition, of the record of key at origin offset o. A copy that is
// not known (produced into the chain by someone else, e.g. a redrive)
// enters the chain.
func (s *chainState) routeRetry(key string, level int, off, o int64) route {
	if s.stale[staleCopy{level, off}] {
		delete(s.stale, staleCopy{level, off})
		if k := s.keys[key]; k != nil {
			if k.stale[o]--; k.stale[o] <= 0 {
				delete(k.stale, o)
			}
		}
		return routeDrop
	}
	k := s.keys[key]
	if k == nil {
		k = newKeyState()
		s.keys[key] = k
	}
	if k.settled[o] {
		return routeDrop
	}
	if !k.isLive(o) {
		s.enter(key, o, level)
	}
	if h, _ := k.head(); h < o {
		return routePark
	}
	if k.dead(o) {
		return routeDead
	}
	return routeHandle
}

// inChain reports whether key has records in the chain.
func (s *chainState) inChain(key string) bool {
	k := s.keys[key]
	return k != nil && len(k.live) > 0
}

// enter records that the record of key at origin offset o is in the chain
// at level.
func (s *chainState) enter(key string, o int64, level int) {
	k := s.keys[key]
	if k == nil {
		k = newKeyState()
		s.keys[key] = k
	}
	if _, ok := k.level[o]; !ok {
		i, _ := slices.BinarySearch(k.live, o)
		k.live = slices.Insert(k.live, i, o)
	}
	k.level[o] = level
	k.maxO = max(k.maxO, o)
}

// leave records that the record of key at origin offset o left the chain
// (handled or dead-lettered). The key stays known (for dropping replays)
// until sweep.
func (s *chainState) leave(key string, o int64) {
	k := s.keys[key]
	if k == nil {
		return
	}
	if _, ok := k.level[o]; ok {
		delete(k.level, o)
		if i, found := slices.BinarySearch(k.live, o); found {
			k.live = slices.Delete(k.live, i, i+1)
		}
	}
	k.maxO = max(k.maxO, o)
	if len(k.live) == 0 {
		// Dead-lettering the rest ends when the key's chain is empty.
		k.deadMax = -1
	}
}

// markDead makes every record of key now in the chain dead
// (OrderedDeadLetterRest) and returns the levels they are at.
func (s *chainState) markDead(key string) []int {
	k := s.keys[key]
	if k == nil || len(k.live) == 0 {
		return nil
	}
	k.deadMax = max(k.deadMax, k.live[len(k.live)-1])
	var levels []int
	for _, l := range k.level {
		if !slices.Contains(levels, l) {
			levels = append(levels, l)
		}
	}
	slices.Sort(levels)
	return levels
}

// staleLeft reports whether outdated copies of the record at origin
// offset o of key are still ahead.
func (s *chainState) staleLeft(key string, o int64) bool {
	k := s.keys[key]
	return k != nil && k.stale[o] > 0
}

// sweep forgets keys without records in the chain once the origin
// partition was processed past every offset they could drop as a replay.
func (s *chainState) sweep(originNext int64) {
	for key, k := range s.keys {
		if len(k.live) == 0 && len(k.stale) == 0 && len(k.waits) == 0 && k.maxO < originNext {
			delete(s.keys, key)
		}
	}
}

// loadedCopy is a record read from a retry partition when rebuilding the
// state.
type loadedCopy struct {
	key    string
	level  int
	offset int64
	m      meta
}

// rebuild computes the state from the records read between the group's
// committed offsets and the ends of the partition's retry levels. A record
// may have several copies there (a crash left the older ones
// uncommitted): its newest copy (highest hop count) is the live one and the others are stale. A record settled by a dead-letter
// marker has no live copy.
func rebuild(levels int, copies []loadedCopy) *chainState {
	s := newChainState(levels)
	type rec struct {
		key string
		o   int64
	}
	newest := map[rec]loadedCopy{}
	var order []rec
	settled := map[rec]bool{}
	for _, c := range copies {
		k := s.keys[c.key]
		if k == nil {
			k = newKeyState()
			s.keys[c.key] = k
		}
		id := rec{c.key, c.m.offset}
		if c.m.marker != "" {
			settled[id] = true
			if k.settled == nil {
				k.settled = map[int64]bool{}
			}
			k.settled[c.m.offset] = true
			k.maxO = max(k.maxO, c.m.offset)
			if c.m.marker == markerDead {
				k.deadMax = max(k.deadMax, c.m.deadThrough)
			}
			continue
		}
		if c.m.deadKey {
			k.deadMax = max(k.deadMax, c.m.offset)
		}
		prev, seen := newest[id]
		if !seen {
			order = append(order, id)
			newest[id] = c
			continue
		}
		older := c
		if ch, ph := c.m.hopAt(c.level), prev.m.hopAt(prev.level); ch > ph || (ch == ph && c.level == prev.level && c.offset > prev.offset) {
			older, newest[id] = prev, c
		}
		s.markStale(older)
	}
	for _, id := range order {
		c := newest[id]
		if settled[id] {
			s.markStale(c)
			continue
		}
		s.enter(c.key, c.m.offset, c.level)
	}
	for _, k := range s.keys {
		if len(k.live) == 0 {
			k.deadMax = -1
		}
	}
	return s
}

func (s *chainState) markStale(c loadedCopy) {
	s.stale[staleCopy{c.level, c.offset}] = true
	k := s.keys[c.key]
	if k.stale == nil {
		k.stale = map[int64]int{}
	}
	k.stale[c.m.offset]++
}
