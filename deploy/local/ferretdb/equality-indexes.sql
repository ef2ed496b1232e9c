-- Makes FerretDB's equality lookups indexed, as they are on MongoDB.
--
-- FerretDB 1.x (PostgreSQL backend) pushes a scalar equality filter down as
-- `_jsonb->'field' @> '"value"'`, and builds every MongoDB index (the `_id` index included)
-- as a btree over `(_jsonb->'field')`. A btree cannot answer `@>`, so without more every
-- lookup, even by `_id`, reads the whole collection (measured here: 4-5 ms at 10,000
-- documents, growing with the collection). This event trigger gives each btree index key
-- FerretDB creates a companion GIN index (jsonb_path_ops) over the same expression, which
-- PostgreSQL uses for `@>`. The MongoDB indexes the read models declare thus serve their
-- equality lookups here as they do on MongoDB; FerretDB still re-checks every filter itself.
--
-- Installed by deploy/local (services.sh, start_mongo) into FerretDB's own database;
-- idempotent. Range filters and sorts are never pushed down by FerretDB, indexed or not.

CREATE OR REPLACE FUNCTION chat_equality_indexes() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    command record;
    key_count int;
    expression text;
    companion text;
BEGIN
    FOR command IN
        SELECT c.objid, c.schema_name
        FROM pg_event_trigger_ddl_commands() c
        WHERE c.command_tag = 'CREATE INDEX' AND c.object_type = 'index'
    LOOP
        -- Only FerretDB's btree indexes (our own GIN companions end here).
        CONTINUE WHEN NOT EXISTS (
            SELECT 1 FROM pg_class i JOIN pg_am am ON am.oid = i.relam
            WHERE i.oid = command.objid AND am.amname = 'btree');
        SELECT x.indnkeyatts INTO key_count FROM pg_index x WHERE x.indexrelid = command.objid;
        FOR k IN 1..key_count LOOP
            expression := pg_get_indexdef(command.objid, k, true);
            CONTINUE WHEN expression !~ '^\(?_jsonb -> ''[^'']+''::text\)?$';
            companion := 'eq_' || substr(md5(command.objid::regclass::text || expression), 1, 24);
            EXECUTE format(
                'CREATE INDEX IF NOT EXISTS %I ON %s USING gin ((%s) jsonb_path_ops)',
                companion,
                (SELECT x.indrelid::regclass::text FROM pg_index x WHERE x.indexrelid = command.objid),
                expression);
        END LOOP;
    END LOOP;
END;
$$;

DROP EVENT TRIGGER IF EXISTS chat_equality_indexes;
CREATE EVENT TRIGGER chat_equality_indexes ON ddl_command_end
    WHEN TAG IN ('CREATE INDEX')
    EXECUTE FUNCTION chat_equality_indexes();
