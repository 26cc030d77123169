-- store_v2.sql - migration 1 -> 2: the HA pair (SPEC §8).
--
-- ha_state holds this node's view of the pair: the VRRP role keepalived last
-- reported (`proxyctl ha notify`), and `serial`, a counter of changes to the
-- replicated state (sites, generations, certificates, ACME accounts, ticket
-- keys).  The triggers below bump it on every such change; a pull from the
-- peer sets it to the peer's serial in the same transaction, so two nodes with
-- equal serials hold the same replicated state.  ha_keys holds the cluster CA
-- and this node's certificate for the mutually authenticated replication
-- link; the CA key is kept only on the node that ran `ha init` first.

CREATE TABLE ha_state (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    role         TEXT NOT NULL DEFAULT '' CHECK (role IN ('', 'MASTER', 'BACKUP', 'FAULT', 'STOP')),
    role_changed INTEGER NOT NULL DEFAULT 0,     -- unix seconds
    serial       INTEGER NOT NULL DEFAULT 0,
    synced       INTEGER NOT NULL DEFAULT 0,     -- last successful pull, unix seconds
    synced_from  TEXT NOT NULL DEFAULT ''        -- the peer node it came from
);
INSERT INTO ha_state (id) VALUES (1);

CREATE TABLE ha_keys (
    name     TEXT PRIMARY KEY CHECK (name IN ('ca', 'node')),
    cert_pem TEXT NOT NULL,
    key_pem  TEXT NOT NULL DEFAULT '',           -- '' for a CA whose key stayed on the other node
    subject  TEXT NOT NULL,                      -- the node name (CN), or the CA's name
    created  INTEGER NOT NULL
);

CREATE TRIGGER ha_serial_sites_i AFTER INSERT ON sites BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_sites_u AFTER UPDATE ON sites BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_sites_d AFTER DELETE ON sites BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_gen_i AFTER INSERT ON generations WHEN NEW.active = 1
    BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_gen_u AFTER UPDATE OF active ON generations WHEN NEW.active = 1 AND OLD.active = 0
    BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_certs_i AFTER INSERT ON certificates BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_certs_u AFTER UPDATE ON certificates BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_certs_d AFTER DELETE ON certificates BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_acct_i AFTER INSERT ON acme_accounts BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_acct_u AFTER UPDATE ON acme_accounts BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_acct_d AFTER DELETE ON acme_accounts BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_tk_i AFTER INSERT ON ticket_keys BEGIN UPDATE ha_state SET serial = serial + 1; END;
CREATE TRIGGER ha_serial_tk_d AFTER DELETE ON ticket_keys BEGIN UPDATE ha_state SET serial = serial + 1; END;
