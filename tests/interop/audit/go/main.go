// Command auditcheck verifies a Greenhouse audit export with Go's own
// implementations of signed notes (golang.org/x/mod/sumdb/note) and RFC 6962
// Merkle trees (golang.org/x/mod/sumdb/tlog), sharing no code with the Python
// library that wrote the export.
//
// Usage:
//
//	auditcheck EXPORT_DIR LOG_VKEY [WITNESS_VKEY ...]
//
// For every checkpoints/*.note it opens the signed note with note.Open and the
// log's verifier key, parses the C2SP checkpoint body (origin, size, base64
// root), recomputes the tree hash over the first <size> lines of
// entries.jsonl (leaf = line bytes without the newline) with tlog.StoredHashes
// and tlog.TreeHash, checks the inclusion proof of the last leaf
// (tlog.ProveRecord / tlog.CheckRecord) and the consistency proof from the
// previous checkpoint (tlog.ProveTree / tlog.CheckTree). Cosignatures
// (c2sp.org/tlog-cosignature, type 0x04, which x/mod's note package does not
// verify itself) are checked with crypto/ed25519 for the witness keys given.
//
// Only whole exports (starting at entry 0) are supported. On success it prints
// one line "ok entries=N checkpoints=K size=S root=<base64> cosigned=W" (W: witnesses
// whose cosignature on the latest checkpoint verified)
// and exits 0; on any failure it prints "auditcheck: <reason>" on stderr and
// exits 1.
package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type witnessKey struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "auditcheck: "+format+"\n", args...)
	os.Exit(1)
}

// parseWitnessKey decodes "name+hex8+base64(0x04 || key)" (c2sp.org/signed-note).
func parseWitnessKey(vkey string) witnessKey {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		fail("witness key %q is not name+hash+key", vkey)
	}
	hash, err := strconv.ParseUint(parts[1], 16, 32)
	raw, err2 := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || err2 != nil || len(raw) != 33 || raw[0] != 0x04 {
		fail("witness key %q is not a cosignature/v1 key", vkey)
	}
	sum := sha256.Sum256(append([]byte(parts[0]+"\n"), raw...))
	if binary.BigEndian.Uint32(sum[:4]) != uint32(hash) {
		fail("witness key %q has a wrong key hash", vkey)
	}
	return witnessKey{name: parts[0], hash: uint32(hash), key: ed25519.PublicKey(raw[1:])}
}

// cosigned counts the given witnesses whose cosignature/v1 on the note verifies.
func cosigned(n *note.Note, witnesses []witnessKey) int {
	count := 0
	for _, w := range witnesses {
		for _, sig := range n.UnverifiedSigs {
			if sig.Name != w.name || sig.Hash != w.hash {
				continue
			}
			raw, err := base64.StdEncoding.DecodeString(sig.Base64)
			if err != nil || len(raw) != 4+8+64 {
				fail("cosignature by %s is malformed", w.name)
			}
			ts := binary.BigEndian.Uint64(raw[4:12])
			msg := fmt.Sprintf("cosignature/v1\ntime %d\n%s", ts, n.Text)
			if !ed25519.Verify(w.key, []byte(msg), raw[12:]) {
				fail("cosignature by %s does not verify", w.name)
			}
			count++
			break
		}
	}
	return count
}

func main() {
	if len(os.Args) < 3 {
		fail("usage: auditcheck EXPORT_DIR LOG_VKEY [WITNESS_VKEY ...]")
	}
	dir := os.Args[1]
	verifier, err := note.NewVerifier(strings.TrimSpace(os.Args[2]))
	if err != nil {
		fail("log key: %v", err)
	}
	var witnesses []witnessKey
	for _, vkey := range os.Args[3:] {
		witnesses = append(witnesses, parseWitnessKey(strings.TrimSpace(vkey)))
	}

	data, err := os.ReadFile(filepath.Join(dir, "entries.jsonl"))
	if err != nil {
		fail("%v", err)
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		fail("entries.jsonl does not end in a newline")
	}
	lines := bytes.Split(data, []byte("\n"))
	lines = lines[:len(lines)-1]

	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			if x < 0 || x >= int64(len(stored)) {
				return nil, fmt.Errorf("no stored hash %d", x)
			}
			out[i] = stored[x]
		}
		return out, nil
	})
	for i, line := range lines {
		hashes, err := tlog.StoredHashes(int64(i), line, reader)
		if err != nil {
			fail("entry %d: %v", i, err)
		}
		stored = append(stored, hashes...)
	}

	paths, err := filepath.Glob(filepath.Join(dir, "checkpoints", "*.note"))
	if err != nil || len(paths) == 0 {
		fail("no checkpoints in %s", dir)
	}
	sort.Strings(paths)
	var prevSize int64
	var prevRoot, root tlog.Hash
	latestCosigned := 0
	for _, path := range paths {
		msg, err := os.ReadFile(path)
		if err != nil {
			fail("%v", err)
		}
		n, err := note.Open(msg, note.VerifierList(verifier))
		if err != nil {
			fail("%s: %v", filepath.Base(path), err)
		}
		body := strings.Split(strings.TrimSuffix(n.Text, "\n"), "\n")
		if len(body) < 3 {
			fail("%s: checkpoint body has %d lines", filepath.Base(path), len(body))
		}
		size, err := strconv.ParseInt(body[1], 10, 64)
		if err != nil || size < 0 {
			fail("%s: bad tree size %q", filepath.Base(path), body[1])
		}
		rootBytes, err := base64.StdEncoding.DecodeString(body[2])
		if err != nil || len(rootBytes) != tlog.HashSize {
			fail("%s: bad root hash", filepath.Base(path))
		}
		copy(root[:], rootBytes)
		if size > int64(len(lines)) {
			fail("checkpoint of size %d but only %d entries", size, len(lines))
		}
		if size == 0 {
			if root != tlog.Hash(sha256.Sum256(nil)) {
				fail("empty checkpoint does not carry the RFC 6962 empty root")
			}
		} else {
			computed, err := tlog.TreeHash(size, reader)
			if err != nil {
				fail("tree hash %d: %v", size, err)
			}
			if computed != root {
				fail("size %d: computed root %s, checkpoint claims %s", size, computed, root)
			}
			proof, err := tlog.ProveRecord(size, size-1, reader)
			if err != nil {
				fail("inclusion proof %d: %v", size-1, err)
			}
			if err := tlog.CheckRecord(proof, size, root, size-1, tlog.RecordHash(lines[size-1])); err != nil {
				fail("inclusion of entry %d in %d: %v", size-1, size, err)
			}
		}
		if prevSize > 0 && size > prevSize {
			proof, err := tlog.ProveTree(size, prevSize, reader)
			if err != nil {
				fail("consistency proof %d -> %d: %v", prevSize, size, err)
			}
			if err := tlog.CheckTree(proof, size, root, prevSize, prevRoot); err != nil {
				fail("consistency %d -> %d: %v", prevSize, size, err)
			}
		}
		latestCosigned = cosigned(n, witnesses)
		prevSize, prevRoot = size, root
	}
	fmt.Printf("ok entries=%d checkpoints=%d size=%d root=%s cosigned=%d\n",
		len(lines), len(paths), prevSize, root, latestCosigned)
}
