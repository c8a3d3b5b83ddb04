// Package oci builds container images from already-built binaries, writes them into an OCI image
// layout directory (https://github.com/opencontainers/image-spec/blob/main/image-layout.md) and reads
// them back: it lists and finds images by reference, reads their config and extracts their root
// filesystem. It needs no Docker daemon and no registry.
//
// The writer side is what `make images` (test/images) uses; the reader side is how the lab's kubelet
// "pulls" an image. Tests and test tooling (test/...) may import it; production code must not.
//
// Every image in a layout is a descriptor of index.json annotated with
// io.containerd.image.name=<full reference> and org.opencontainers.image.ref.name=<tag>, so
// `ctr images import` and skopeo understand the layout too. An image built for several platforms is
// a nested image index under one such descriptor. Writing an image whose reference is already in the
// layout replaces it; blobs no longer referenced are deleted.
package oci

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Annotations on the descriptors of index.json.
const (
	// AnnotationImageName is containerd's annotation for the full reference of an image.
	AnnotationImageName = "io.containerd.image.name"
	// AnnotationRefName is the OCI annotation for an image's tag.
	AnnotationRefName = "org.opencontainers.image.ref.name"
)

// Image labels Build sets from Spec.
const (
	LabelVersion = "org.opencontainers.image.version"
	LabelSource  = "org.opencontainers.image.source"
	LabelTitle   = "org.opencontainers.image.title"
)

// NormalizeRef parses ref the way container runtimes do ("app:1" is docker.io/library/app:1, no tag
// is :latest) and returns the containerd spelling of it (docker.io rather than index.docker.io) and
// its tag. A reference by digest is refused: a layout names images by tag.
func NormalizeRef(ref string) (full, tag string, err error) {
	if strings.TrimSpace(ref) == "" {
		return "", "", fmt.Errorf("image reference is empty")
	}
	if strings.Contains(ref, "@") {
		return "", "", fmt.Errorf("image reference %q: references by digest are not supported, use a tag", ref)
	}
	t, err := name.NewTag(ref, name.WithDefaultTag("latest"))
	if err != nil {
		return "", "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	reg := t.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return reg + "/" + t.RepositoryStr() + ":" + t.TagStr(), t.TagStr(), nil
}

// nameTag parses a reference NormalizeRef returned.
func nameTag(full string) (name.Tag, error) {
	return name.NewTag(full)
}
