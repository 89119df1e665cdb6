"""What every job needs below its domain code: storage (local and S3, atomic publish), starting
or joining Ray, the typed config/CLI layer. Imports only ``schemas`` among project packages."""
