package explain_test

import (
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/warren-mesh/warren/api/nodeconfig"
)

func protojsonMarshal(s *nodeconfig.Snapshot) ([]byte, error) { return protojson.Marshal(s) }
