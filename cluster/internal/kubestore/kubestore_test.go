package kubestore

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/metadata"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	bolt "go.etcd.io/bbolt"
)

// fixture writes an image's manifest and config (two layers) into dir.
func fixture(t *testing.T, dir, name string, pinned bool) Image {
	t.Helper()
	diffs := []digest.Digest{digest.FromString(name + "1"), digest.FromString(name + "2")}
	config, _ := json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffs},
	})
	layer := func(d digest.Digest) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: d, Size: 1000}
	}
	manifest, _ := json.Marshal(ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers:    []ocispec.Descriptor{layer(digest.FromString("a" + name)), layer(digest.FromString("b" + name))},
	})
	img := Image{
		Name:              "cairn.local/" + name + ":pinned",
		Manifest:          filepath.Join(dir, name+".manifest"),
		ManifestMediaType: ocispec.MediaTypeImageManifest,
		Config:            filepath.Join(dir, name+".config"),
		Rootfs:            filepath.Join(dir, name, "rootfs"),
		Pinned:            pinned,
	}
	if err := os.MkdirAll(img.Rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img.Manifest, manifest, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(img.Config, config, 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

func spec(t *testing.T) Spec {
	dir := t.TempDir()
	return Spec{Epoch: 1700000000, Images: []Image{fixture(t, dir, "web", false), fixture(t, dir, "pause", true)}}
}

// tree reads every file and symlink under root.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			out[rel] = "-> " + target
			return err
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			out[rel] = string(data)
			return err
		}
		out[rel+"/"] = ""
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// open opens a written root as containerd does (its metadata DB over its
// content store and overlay snapshotter).
func open(t *testing.T, root string) (*metadata.DB, context.Context) {
	t.Helper()
	cs, err := local.NewStore(filepath.Join(root, ContentRoot))
	if err != nil {
		t.Fatal(err)
	}
	ovl, err := overlay.NewSnapshotter(filepath.Join(root, SnapshotRoot), overlay.WithMountOptions([]string{"userxattr", "index=off"}))
	if err != nil {
		t.Fatal(err)
	}
	bdb, err := bolt.Open(filepath.Join(root, MetaDB), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bdb.Close(); ovl.Close() })
	db := metadata.NewDB(bdb, cs, map[string]snapshots.Snapshotter{Snapshotter: ovl})
	if err := db.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return db, namespaces.WithNamespace(context.Background(), Namespace)
}

func TestTwoWritesGiveTheSameBytes(t *testing.T) {
	s := spec(t)
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	if err := Write(context.Background(), s, a); err != nil {
		t.Fatal(err)
	}
	// The images in the other order: the output does not depend on it.
	s.Images[0], s.Images[1] = s.Images[1], s.Images[0]
	if err := Write(context.Background(), s, b); err != nil {
		t.Fatal(err)
	}
	ta, tb := tree(t, a), tree(t, b)
	if len(ta) != len(tb) {
		t.Fatalf("%d files vs %d", len(ta), len(tb))
	}
	for k, v := range ta {
		if tb[k] != v {
			t.Errorf("%s differs between two writes", k)
		}
	}
	// Control: another epoch changes the bolt files.
	s.Epoch++
	c := filepath.Join(t.TempDir(), "c")
	if err := Write(context.Background(), s, c); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal([]byte(tree(t, c)[MetaDB]), []byte(ta[MetaDB])) {
		t.Error("the epoch is not in the metadata DB's times")
	}
}

// What the CRI does at start (internal/cri/server/images/check.go and
// store/image): the content check, the top chain ID's snapshot, the config.
func TestTheCRISeesEveryImageUnpacked(t *testing.T) {
	s := spec(t)
	root := filepath.Join(t.TempDir(), "root")
	if err := Write(context.Background(), s, root); err != nil {
		t.Fatal(err)
	}
	db, ctx := open(t, root)
	is := metadata.NewImageStore(db)
	sn := db.Snapshotter(Snapshotter)
	for _, want := range s.Images {
		img, err := is.Get(ctx, want.Name)
		if err != nil {
			t.Fatal(err)
		}
		ok, _, _, _, err := images.Check(ctx, db.ContentStore(), img.Target, platforms.Default())
		if err != nil || !ok {
			t.Fatalf("%s: content check %v %v", want.Name, ok, err)
		}
		diffs, err := img.RootFS(ctx, db.ContentStore(), platforms.Default())
		if err != nil {
			t.Fatal(err)
		}
		info, err := sn.Stat(ctx, identity.ChainID(diffs).String())
		if err != nil || info.Kind != snapshots.KindCommitted {
			t.Fatalf("%s: top chain ID: %v %v", want.Name, info, err)
		}
		if img.Labels[criPinned] != map[bool]string{true: "pinned"}[want.Pinned] {
			t.Errorf("%s: pinned label %q", want.Name, img.Labels[criPinned])
		}
		config, err := img.Config(ctx, db.ContentStore(), platforms.Default())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := is.Get(ctx, config.Digest.String()); err != nil {
			t.Errorf("%s: no record by ID: %v", want.Name, err)
		}
		// A container's snapshot: its lower folder is the image root.
		mounts, err := sn.Prepare(ctx, "container-"+want.Name, info.Name)
		if err != nil {
			t.Fatal(err)
		}
		lower := ""
		for _, o := range mounts[0].Options {
			if l, ok := strings.CutPrefix(o, "lowerdir="); ok {
				lower = l
			}
		}
		if target, err := os.Readlink(lower); err != nil || target != want.Rootfs {
			t.Errorf("%s: lower %s -> %s (%v), want %s", want.Name, lower, target, err, want.Rootfs)
		}
	}
}

func TestTheGCKeepsThemAndDropsThemWithoutTheirImages(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	s := spec(t)
	if err := Write(context.Background(), s, root); err != nil {
		t.Fatal(err)
	}
	db, ctx := open(t, root)
	count := func() (n int) {
		if err := db.Snapshotter(Snapshotter).Walk(ctx, func(context.Context, snapshots.Info) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if _, err := db.GarbageCollect(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 2 {
		t.Fatalf("after GC: %d snapshots, want 2", n)
	}
	// Control: without the image records, the same GC drops everything.
	is := metadata.NewImageStore(db)
	all, _ := is.List(ctx)
	for _, img := range all {
		if err := is.Delete(ctx, img.Name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.GarbageCollect(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Fatalf("control: %d snapshots left without images", n)
	}
}

func TestABadSpecIsRefused(t *testing.T) {
	s := spec(t)
	s.Images[0].Config = s.Images[1].Config
	if err := Write(context.Background(), s, filepath.Join(t.TempDir(), "x")); err == nil {
		t.Fatal("a config the manifest does not name was accepted")
	}
}
