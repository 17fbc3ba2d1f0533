// Package kubestore writes, at build time and without a daemon or a mount,
// the containerd root a runtime = "kubernetes" image boots with: containerd's
// own metadata DB, content store and overlayfs snapshotter storage, used
// in-process. Each pinned image gets its index-free manifest and config as
// content, an image record in the CRI's namespace, and one committed
// snapshot named by its top chain ID whose fs folder is a symlink to the
// image root cairn unpacked (with its own layer reader) in the verified
// root. No layer blob is stored and no layer is parsed here: the CRI only
// reads the manifest and config and Stats the top chain ID.
//
// The output is reproducible: images in name order, every timestamp the
// given epoch, snapshot usage zero, and each bolt file rewritten key by key
// into a fresh file.
package kubestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// The CRI's namespace and snapshotter (containerd.toml says overlayfs).
const (
	Namespace   = "k8s.io"
	Snapshotter = "overlayfs"
)

// Where containerd keeps each plugin's data under its root.
const (
	MetaDB       = "io.containerd.metadata.v1.bolt/meta.db"
	ContentRoot  = "io.containerd.content.v1.content"
	SnapshotRoot = "io.containerd.snapshotter.v1.overlayfs"
)

// Labels containerd's GC follows and the CRI's own labels, set here as the
// CRI would set them at its first start, so it has nothing to write.
const (
	gcConfig   = "containerd.io/gc.ref.content.config"
	gcSnapshot = "containerd.io/gc.ref.snapshot." + Snapshotter
	criManaged = "io.cri-containerd.image"
	criPinned  = "io.cri-containerd.pinned"
)

// Image is one pinned image.
type Image struct {
	// Reference, e.g. cairn.local/inference:pinned.
	Name string `json:"name"`
	// Files holding the manifest's and the config's exact bytes.
	Manifest          string `json:"manifest"`
	ManifestMediaType string `json:"manifest_media_type"`
	Config            string `json:"config"`
	// The image root as the running system sees it (absolute).
	Rootfs string `json:"rootfs"`
	// The CRI's pinned label (the sandbox image).
	Pinned bool `json:"pinned"`
}

// Spec is the tool's input.
type Spec struct {
	Epoch  int64   `json:"epoch"`
	Images []Image `json:"images"`
}

// Write makes the containerd root in out, which must not exist.
func Write(ctx context.Context, spec Spec, out string) error {
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("%s already exists", out)
	}
	if err := os.MkdirAll(filepath.Join(out, filepath.Dir(MetaDB)), 0o700); err != nil {
		return err
	}
	work, err := os.MkdirTemp(out, ".work-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	cs, err := local.NewStore(filepath.Join(out, ContentRoot))
	if err != nil {
		return err
	}
	snRoot := filepath.Join(out, SnapshotRoot)
	// Both options given, so the snapshotter probes nothing on this host;
	// they only shape mounts, which are never made here.
	ovl, err := overlay.NewSnapshotter(snRoot, overlay.WithMountOptions([]string{"userxattr", "index=off"}))
	if err != nil {
		return err
	}
	rawMeta := filepath.Join(work, "meta.db")
	bdb, err := bolt.Open(rawMeta, 0o600, nil)
	if err != nil {
		return err
	}
	db := metadata.NewDB(bdb, cs, map[string]snapshots.Snapshotter{Snapshotter: ovl})
	if err := db.Init(ctx); err != nil {
		bdb.Close()
		return err
	}
	err = addImages(namespaces.WithNamespace(ctx, Namespace), db, spec.Images)
	if cerr := bdb.Close(); err == nil {
		err = cerr
	}
	if cerr := ovl.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	at, err := time.Unix(spec.Epoch, 0).UTC().MarshalBinary()
	if err != nil {
		return err
	}
	if err := rewrite(rawMeta, filepath.Join(out, MetaDB), fixTimes(at, nil)); err != nil {
		return err
	}
	snDB := filepath.Join(snRoot, "metadata.db")
	zero := binary.AppendVarint(nil, 0)
	if err := rewrite(snDB, snDB+".new", fixTimes(at, zero)); err != nil {
		return err
	}
	return os.Rename(snDB+".new", snDB)
}

func addImages(ctx context.Context, db *metadata.DB, list []Image) error {
	list = append([]Image(nil), list...)
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	cs := db.ContentStore()
	sn := db.Snapshotter(Snapshotter)
	is := metadata.NewImageStore(db)
	named := map[string]bool{}
	for _, img := range list {
		if img.Name == "" || !filepath.IsAbs(img.Rootfs) {
			return fmt.Errorf("image %q: needs a name and an absolute rootfs", img.Name)
		}
		if named[img.Name] {
			return fmt.Errorf("image %s: named twice", img.Name)
		}
		named[img.Name] = true
		manifest, err := os.ReadFile(img.Manifest)
		if err != nil {
			return err
		}
		config, err := os.ReadFile(img.Config)
		if err != nil {
			return err
		}
		var m ocispec.Manifest
		if err := json.Unmarshal(manifest, &m); err != nil {
			return fmt.Errorf("image %s: manifest: %w", img.Name, err)
		}
		if m.Config.Digest != digest.FromBytes(config) || m.Config.Size != int64(len(config)) {
			return fmt.Errorf("image %s: the config is not the one the manifest names (%s)", img.Name, m.Config.Digest)
		}
		var c ocispec.Image
		if err := json.Unmarshal(config, &c); err != nil {
			return fmt.Errorf("image %s: config: %w", img.Name, err)
		}
		if len(c.RootFS.DiffIDs) == 0 || len(c.RootFS.DiffIDs) != len(m.Layers) {
			return fmt.Errorf("image %s: %d diff IDs for %d layers", img.Name, len(c.RootFS.DiffIDs), len(m.Layers))
		}
		chain := identity.ChainID(c.RootFS.DiffIDs).String()
		cdesc := ocispec.Descriptor{MediaType: m.Config.MediaType, Digest: m.Config.Digest, Size: m.Config.Size}
		mdesc := ocispec.Descriptor{MediaType: img.ManifestMediaType, Digest: digest.FromBytes(manifest), Size: int64(len(manifest))}
		// The GC keeps the manifest (an image's target), the config (the
		// manifest's label) and the snapshot (the config's label).
		if err := content.WriteBlob(ctx, cs, "config-"+cdesc.Digest.String(), bytes.NewReader(config), cdesc,
			content.WithLabels(map[string]string{gcSnapshot: chain})); err != nil {
			return fmt.Errorf("image %s: config: %w", img.Name, err)
		}
		if err := content.WriteBlob(ctx, cs, "manifest-"+mdesc.Digest.String(), bytes.NewReader(manifest), mdesc,
			content.WithLabels(map[string]string{gcConfig: cdesc.Digest.String()})); err != nil {
			return fmt.Errorf("image %s: manifest: %w", img.Name, err)
		}
		if err := snapshot(ctx, sn, chain, img.Rootfs); err != nil {
			return fmt.Errorf("image %s: snapshot: %w", img.Name, err)
		}
		labels := map[string]string{criManaged: "managed"}
		if img.Pinned {
			labels[criPinned] = "pinned"
		}
		// The CRI names each image by its reference and by its ID (the
		// config's digest).
		for _, name := range []string{img.Name, cdesc.Digest.String()} {
			if named[name] && name != img.Name {
				continue
			}
			named[name] = true
			if _, err := is.Create(ctx, images.Image{Name: name, Target: mdesc, Labels: labels}); err != nil {
				return fmt.Errorf("image %s: record %s: %w", img.Name, name, err)
			}
		}
	}
	return nil
}

// snapshot commits one snapshot named chain whose fs folder is a symlink to
// rootfs; two images with the same layers share it.
func snapshot(ctx context.Context, sn snapshots.Snapshotter, chain, rootfs string) error {
	if _, err := sn.Stat(ctx, chain); err == nil {
		return nil
	}
	key := "cairn-" + chain
	mounts, err := sn.Prepare(ctx, key, "")
	if err != nil {
		return err
	}
	// A snapshot without a parent is one bind mount of its fs folder.
	if len(mounts) != 1 || mounts[0].Type != "bind" || filepath.Base(mounts[0].Source) != "fs" {
		return fmt.Errorf("unexpected mounts %v", mounts)
	}
	fs := mounts[0].Source
	if err := os.Remove(fs); err != nil {
		return err
	}
	if err := os.Symlink(rootfs, fs); err != nil {
		return err
	}
	return sn.Commit(ctx, chain, key)
}

// fixTimes sets every createdat and updatedat to at and, when usage is not
// nil, every snapshot's size and inodes to it (the host's block counts).
func fixTimes(at, usage []byte) func(key, value []byte) []byte {
	return func(key, value []byte) []byte {
		switch string(key) {
		case "createdat", "updatedat":
			return at
		case "size", "inodes":
			if usage != nil {
				return usage
			}
		}
		return value
	}
}

// rewrite copies the bolt file src into the fresh file dst, bucket by
// bucket in key order (sequences kept), each value through fix, and
// removes src. Each bucket's keys go in a transaction of their own: bolt
// writes a transaction's dirty sibling buckets in Go map order, so a
// transaction that touches one path of buckets is what gives the same
// pages (the same bytes) every time.
func rewrite(src, dst string, fix func(key, value []byte) []byte) error {
	in, err := bolt.Open(src, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := bolt.Open(dst, 0o644, nil)
	if err != nil {
		return err
	}
	err = in.View(func(rtx *bolt.Tx) error {
		return rtx.ForEach(func(name []byte, b *bolt.Bucket) error {
			return copyBucket(out, [][]byte{name}, b, fix)
		})
	})
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Remove(src)
}

// copyBucket writes the bucket at path (made here) with its values in one
// transaction, then each child bucket the same way.
func copyBucket(out *bolt.DB, path [][]byte, from *bolt.Bucket, fix func(key, value []byte) []byte) error {
	var children [][]byte
	err := out.Update(func(tx *bolt.Tx) error {
		to, err := tx.CreateBucket(path[0])
		if len(path) > 1 {
			to = tx.Bucket(path[0])
			for _, p := range path[1 : len(path)-1] {
				to = to.Bucket(p)
			}
			to, err = to.CreateBucket(path[len(path)-1])
		}
		if err != nil {
			return err
		}
		if err := to.SetSequence(from.Sequence()); err != nil {
			return err
		}
		return from.ForEach(func(k, v []byte) error {
			if v == nil {
				children = append(children, append([]byte(nil), k...))
				return nil
			}
			return to.Put(k, fix(k, v))
		})
	})
	if err != nil {
		return err
	}
	for _, k := range children {
		if err := copyBucket(out, append(append([][]byte(nil), path...), k), from.Bucket(k), fix); err != nil {
			return err
		}
	}
	return nil
}
