package archiveapi

import (
	"context"
	"net/http"

	"github.com/munnerz/goautoneg"
)

type tableKey struct{}

// withTableRequests marks the context of a request whose answer is a Table (what kubectl get asks
// for): its list is served from the index's entries alone. The generic server chooses the output
// after the storage lists, so the storage learns it here, from the same Accept header.
func withTableRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if wantsTable(req.Header.Get("Accept")) {
			req = req.WithContext(context.WithValue(req.Context(), tableKey{}, true))
		}
		h.ServeHTTP(w, req)
	})
}

// wantsTable reports whether the media type the server picks from accept is a meta.k8s.io Table:
// the first one it accepts, in order of preference.
func wantsTable(accept string) bool {
	for _, a := range goautoneg.ParseAccept(accept) {
		if a.Q <= 0 {
			continue
		}
		if a.Params["as"] != "Table" {
			return false // an object, a list or their metadata is preferred
		}
		if v := a.Params["v"]; a.Params["g"] == "meta.k8s.io" && (v == "v1" || v == "v1beta1") {
			return true
		}
		// a Table of a version the server does not make: it looks at the next type
	}
	return false
}

// entriesSuffice reports whether the list being served becomes a Table.
func entriesSuffice(ctx context.Context) bool {
	v, _ := ctx.Value(tableKey{}).(bool)
	return v
}
