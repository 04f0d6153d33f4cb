package v1alpha1

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
)

// UpdateToken returns the change-group update token of the given groups, to be sent in the
// runservice.dev/changegroups-update-token annotation of a mutating Run request. For one group it is
// the group's resourceVersion; for several, an opaque encoding of each one's. A group that does not
// exist yet is given with an empty resourceVersion.
func UpdateToken(groups ...*ChangeGroup) string {
	if len(groups) == 1 {
		return groups[0].ResourceVersion
	}
	m := make(map[string]string, len(groups))
	for _, g := range groups {
		m[g.Name] = g.ResourceVersion
	}
	b, _ := json.Marshal(m) // a map of strings always marshals
	return "v1:" + base64.RawURLEncoding.EncodeToString(b)
}

// ParseUpdateToken returns the resourceVersion the token holds for each of the run's groups.
func ParseUpdateToken(token string, groups []string) (map[string]string, error) {
	if len(groups) == 1 {
		return map[string]string{groups[0]: token}, nil
	}
	const prefix = "v1:"
	if len(token) < len(prefix) || token[:len(prefix)] != prefix {
		return nil, fmt.Errorf("the update token of %d change groups must come from UpdateToken over all of them", len(groups))
	}
	b, err := base64.RawURLEncoding.DecodeString(token[len(prefix):])
	if err != nil {
		return nil, fmt.Errorf("malformed update token: %w", err)
	}
	m := map[string]string{}
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("malformed update token: %w", err)
	}
	var missing []string
	for _, g := range groups {
		if _, ok := m[g]; !ok {
			missing = append(missing, g)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("the update token has no version for change groups %v", missing)
	}
	return m, nil
}
